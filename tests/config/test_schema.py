"""Configuration against its schema: generated files, hostile YAML, and what users read.

Every file is accepted or refused with a ConfigError naming the file; nothing else may
escape `config.load` (the CLI turns a ConfigError into one line and exit code 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from carbonmeter import cli, config
from carbonmeter.config import ConfigError, schema

SECTIONS = {name: [f.name for f in dataclasses.fields(cls)]
            for name, cls in config.sections().items() if dataclasses.is_dataclass(cls)}

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**309)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["FR", "fra", "Atlantis", "127.0.0.1:9", ":99999", "[::1]:1",
                              "x:²", "rapl", "nvml", "info", "", "0", "GPU-1", "/tmp/x"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | st.sampled_from(
                          schema.MIX_SOURCES), inner, max_size=4), max_leaves=12)
key_names = st.sampled_from(sorted({k for keys in SECTIONS.values() for k in keys}))
section = st.dictionaries(key_names | st.text(max_size=10), values, max_size=6)
documents = st.dictionaries(st.sampled_from(sorted(SECTIONS)) | st.text(max_size=10),
                            section | values, max_size=5)
DEFAULTS = config.load(env={}).as_dict()
known_keys = st.sampled_from([(sec, key) for sec, keys in SECTIONS.items() for key in keys])


@st.composite
def mutated(draw) -> dict:
    """The valid defaults with one to three values replaced: reaches every key's check
    (a fully random document mostly stops at its first unknown key)."""
    doc = {sec: dict(v) if isinstance(v, dict) else v for sec, v in DEFAULTS.items()}
    for sec, key in draw(st.lists(known_keys, min_size=1, max_size=3)):
        doc[sec][key] = draw(values)
    return doc


raw_text = st.text(alphabet=st.sampled_from(list("abc:-[]{}&*!|>'\"#,? \n\t01.e")),
                   max_size=80)
# YAML that parses into surprises: bad dates, explicit tags, merges, sets, ordered maps
fragments = st.sampled_from([
    "2020-13-45", "2020-01-01", "2020-01-01 10:00:00", "!!float abc", "!!int abc",
    "!!int 0x1F", "!!timestamp x", "!!binary aGk=", "!!binary +", "!!python/object:os.system",
    "!!set {a, b}", "!!omap [a: 1]", "!!omap [1]", "!!str 5", "!!null ''", "&a [*a]",
    "{<<: {x: 1}}", "{<<: 5}", "? [1]\n  : 2", ".nan", "-.inf", "1e400", "0o17", "~", "'\x00'",
    "\"\\ud800\"", "[" * 40 + "]" * 40, "|\n    text", ">-\n    folded",
])
tricky = st.builds(lambda sec, key, frag: f"{sec}:\n  {key}: {frag}\n",
                   st.sampled_from(sorted(SECTIONS)), key_names, fragments)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield Path(d) / "generated.yaml"


def check(path: Path) -> str:
    """`carbonmeter config check FILE`, in process: valid (exit 0, the effective
    configuration printed) or one line naming the file (exit 2), returned; any other
    exception fails the test."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["config", "check", str(path)])
    if code == 0:
        assert out.getvalue().startswith(f"# {path}: valid") and not err.getvalue()
        return ""
    assert code == 2
    prefix = f"carbonmeter: configuration error: {path}: "
    message = err.getvalue()
    assert message.startswith(prefix) and message.count("\n") == 1, message
    assert len(message) > len(prefix) + 10 and "Traceback" not in message
    return message


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(doc=documents | mutated() | raw_text | tricky, flow=st.booleans())
def test_generated_configurations_are_accepted_or_refused_clearly(scratch, doc, flow):
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, default_flow_style=flow)
    scratch.write_text(text, encoding="utf-8", errors="surrogatepass")
    check(scratch)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "hostile.yaml"
    p.write_text(text)
    return p


def billion_laughs(levels: int, width: int = 10) -> str:
    lines = ["a0: &a0 [lol]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "carbon:\n  mix:\n" + "".join(f"    {ln}\n" for ln in lines)


@pytest.mark.parametrize(("text", "expected"), [
    (billion_laughs(9, width=15), r"more than 100 aliases"),  # 15^8 values if expanded
    (billion_laughs(5), r"more than 10000 values once aliases are expanded"),  # 10^4 + ...
    ("carbon: &a\n  mix: [*a]\n", r"more than 10000 values"),  # an alias inside its anchor
    ("carbon: " + "[" * 5000 + "]" * 5000 + "\n", r"nested deeper than 32 levels"),
    ("".join(f"{' ' * i}k{i}:\n" for i in range(100)) + " " * 100 + "x: 1\n",
     r"nested deeper than 32 levels"),
    ("carbon:\n  region: 2020-13-45\n", r"invalid YAML value: month must be in 1\.\.12"),
    ("carbon:\n  pue: !!float abc\n", r"invalid YAML value"),
    ("carbon:\n  pue: !!python/object:os.system ls\n", r"invalid YAML at line 2"),
    ("carbon:\n  pue: 1" + "0" * 400 + "\n", r"carbon.pue: inf is out of range from 1 to 10"),
    ("carbon:\n  mix: {coal: .inf}\n", r"carbon.mix.coal: inf is out of range of at least 0"),
    ("gpu:\n  devices: [{a: 1}]\n", r"gpu.devices: items must be names or numbers"),
    ("server:\n  listen: 'x:²'\n", r"server.listen: 'x:²' must be HOST:PORT"),
    ("state:\n  checkpoint_seconds: 0\n", r"state.checkpoint_seconds: 0 is out of range from "
                                          r"0.1 to 86400"),
    ("state:\n  pathh: /x\n", r"unknown key 'state.pathh'; did you mean 'state.path'"),
    ("sampler:\n  probe_timeout_seconds: -1\n", r"sampler.probe_timeout_seconds: -1 is out"),
    # a path the kernel refuses to look up (ENAMETOOLONG; found by the generated configs)
    ("otlp:\n  client_certificate: " + "1" * 300 + "\n",
     r"otlp.client_certificate: '1{60}'… \(300 characters\) is not a readable file"),
    ("otlp:\n  certificate: \"/etc/\\0passwd\"\n", r"otlp.certificate: .* contains a NUL byte"),
])
def test_hostile_and_invalid_yaml_is_refused_naming_file_and_key(tmp_path, text, expected):
    """Through `config check`: exit 2 and one line naming the file, the key and the rule."""
    assert re.search(expected, check(write(tmp_path, text)))


def test_oversized_file_is_refused(tmp_path):
    path = write(tmp_path, "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match=r"bytes; a configuration may be at most 1 MiB"):
        config.load(path, env={})


def test_aliases_a_person_would_write_still_work(tmp_path):
    path = write(tmp_path, "carbon:\n  mix: &m {nuclear: 0.7, hydro: 0.3}\n"
                           "  source_intensities: {<<: {nuclear: 12}, coal: 900}\n")
    cfg = config.load(path, env={})
    assert cfg.carbon.mix == {"nuclear": 0.7, "hydro": 0.3}
    assert cfg.carbon.source_intensities["nuclear"] == 12


def test_hostile_yaml_in_an_environment_variable_is_only_a_string():
    with pytest.raises(ConfigError) as e:
        config.load(env={"CARBONMETER_SAMPLER_INTERVAL_SECONDS": "[" * 100 + "]" * 100})
    assert str(e.value).startswith("environment variable CARBONMETER_SAMPLER_INTERVAL_SECONDS"
                                   ": sampler.interval_seconds: must be a number from 0.1 to")


def test_serve_exits_2_on_an_alias_bomb_before_listening(tmp_path):
    path = write(tmp_path, billion_laughs(9))
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "serve", "--config", str(path),
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith(f"carbonmeter: configuration error: {path}: invalid YAML")
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1
