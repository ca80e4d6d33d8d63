"""Configuration: defaults that run anywhere, and errors that say what to fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from carbonmeter import config
from carbonmeter.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "carbonmeter.yaml"
    p.write_text(text)
    return p


def test_defaults_load_without_a_file():
    cfg = config.load(env={})
    assert cfg.server.listen == "0.0.0.0:29100"
    assert cfg.sampler.interval_seconds == 15
    assert cfg.carbon.region is None and cfg.carbon.pue == 1.0
    # the RAM estimate's default is the bundled power model's figure, not 3 W per 8 GB
    from carbonmeter.probes.power_model import bundled_model

    assert cfg.section("ram").watts_per_gb == bundled_model().ram_w_per_gb == 0.1


def test_file_overrides_defaults_and_keeps_the_rest(tmp_path):
    cfg = config.load(write(tmp_path, "carbon:\n  region: fr\n  pue: 1.4\n"), env={})
    assert cfg.carbon.region == "fr" and cfg.carbon.pue == 1.4
    assert cfg.sampler.interval_seconds == 15


def test_unknown_key_names_file_key_and_suggestion(tmp_path):
    path = write(tmp_path, "carbon:\n  regoin: FR\n")
    with pytest.raises(ConfigError) as e:
        config.load(path, env={})
    msg = str(e.value)
    assert str(path) in msg and "carbon.regoin" in msg and "did you mean 'carbon.region'" in msg


def test_unknown_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'sampling'; did you mean 'sampler'"):
        config.load(write(tmp_path, "sampling:\n  interval_seconds: 1\n"), env={})


@pytest.mark.parametrize(("text", "expected"), [
    ("sampler:\n  interval_seconds: 0.01\n", r"sampler.interval_seconds: 0.01 is out of range "
                                             r"from 0.1 to 3600"),
    ("sampler:\n  interval_seconds: fast\n", r"sampler.interval_seconds: must be a number"),
    ("carbon:\n  pue: 0.9\n", r"carbon.pue: 0.9 is out of range from 1 to 10"),
    ("rapl:\n  psys: yes please\n", r"rapl.psys: must be true or false"),
    ("server:\n  listen: localhost\n", r"server.listen: 'localhost' must be HOST:PORT"),
    ("log:\n  level: loud\n", r"log.level: 'loud' is not one of debug, info, warning, error"),
    ("probes:\n  disabled: [rapl, gpu]\n", r"'gpu' is not one of rapl, amd_energy, hwmon, nvml"),
    ("carbon:\n  mix: {coal: 1, fusion: 1}\n", r"carbon.mix: unknown key 'fusion'"),
    ("carbon:\n  mix: {coal: 0}\n", r"shares must add up to more than 0"),
    ("- a\n- b\n", r"top level must be a mapping"),
    ("carbon: [1\n", r"invalid YAML at line 2"),
    ("declared:\n  - {id: a, kind: other, watts: 1}\n  - {id: b, kind: other, watts: 2}\n"
     "  - {id: c, kind: other, watts: -3}\n", r"declared\[2\]\.watts: -3 is out of range"),
    ("declared:\n  - {id: a, kind: other, wats: 1}\n",
     r"declared\[0\]: unknown key 'wats'; did you mean 'watts'"),
    ("declared:\n  - {id: a, kind: other}\n", r"declared\[0\]: missing key 'watts'"),
    ("declared:\n  - {id: a, kind: fridge, watts: 1}\n",
     r"declared\[0\]\.kind: 'fridge' is not one of cpu, dram, gpu, ram, platform, other"),
    ("declared:\n  - {id: Switch 1, kind: other, watts: 1}\n",
     r"declared\[0\]\.id: 'Switch 1' must be lower-case"),
    ("declared:\n  - {id: a, kind: other, watts: 1}\n  - {id: a, kind: gpu, watts: 2}\n",
     r"declared\[1\]\.id: 'a' is declared twice"),
    ("declared: {id: a}\n", r"declared: must be a list of mappings"),
    ("declared:\n  - switch\n", r"declared\[0\]: must be a mapping"),
    ("hwmon:\n  kinds: {'amdgpu/*': gpu, 'x/y': fridge}\n",
     r"hwmon\.kinds\.x/y: 'fridge' is not one of cpu, dram, gpu, ram, platform, other, host"),
    ("redfish:\n  url: bmc.example.org\n", r"redfish\.url: 'bmc\.example\.org' must be the "
                                           r"BMC's base URL"),
    ("redfish:\n  auth: digest\n", r"redfish\.auth: 'digest' is not one of basic, session"),
    ("ipmi:\n  timeout_seconds: 0\n", r"ipmi\.timeout_seconds: 0 is out of range"),
])
def test_invalid_values_name_the_key_and_what_is_allowed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as e:
        config.load(path, env={})
    assert str(path) in str(e.value)


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "carbon:\n  region: DE\n")
    cfg = config.load(path, env={"CARBONMETER_CARBON_REGION": "FR",
                                 "CARBONMETER_SAMPLER_INTERVAL_SECONDS": "2.5",
                                 "OTHER": "x"})
    assert cfg.carbon.region == "FR" and cfg.sampler.interval_seconds == 2.5


def test_misspelt_environment_variable_is_an_error():
    with pytest.raises(ConfigError, match=r"CARBONMETER_CARBON_REGOIN.*did you mean "
                                          "'CARBONMETER_CARBON_REGION'"):
        config.load(env={"CARBONMETER_CARBON_REGOIN": "FR"})


def test_command_line_overrides_are_validated():
    with pytest.raises(ConfigError, match=r"sampler\.interval_seconds: 0\.05 is out of range"):
        config.load(env={}, overrides={"sampler.interval_seconds": 0.05})


def test_config_check_prints_effective_config_and_exits_2_on_error(tmp_path):
    good = write(tmp_path, "carbon:\n  region: FRA\n")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "config", "check", str(good)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "region: FRA" in out.stdout and "interval_seconds: 15.0" in out.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("carbon:\n  region: Atlantis\n")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "config", "check", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown region 'Atlantis'" in out.stderr and "Traceback" not in out.stderr


def test_serve_refuses_bad_config_before_listening(tmp_path):
    bad = write(tmp_path, "sampler:\n  interval_seconds: -1\n")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "serve", "--config", str(bad),
                          "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert f"{bad}: sampler.interval_seconds: -1 is out of range" in out.stderr


def test_bundled_default_is_the_documented_example():
    """The shipped default.yaml is itself a valid, fully commented configuration."""
    lines = config.default_text().splitlines()
    for section, keys in config.load(env={}).as_dict().items():
        if not isinstance(keys, dict):  # a top-level list (declared): commented as a whole
            at = next(i for i, line in enumerate(lines) if line.startswith(f"{section}:"))
            assert lines[at - 1].startswith("#"), f"{section} has no comment"
            continue
        start = lines.index(f"{section}:")
        for key in keys:
            at = next(i for i in range(start, len(lines)) if lines[i].startswith(f"  {key}:"))
            assert lines[at - 1].strip().startswith("#"), f"{section}.{key} has no comment"


def test_declared_devices_are_a_checked_list(tmp_path):
    cfg = config.load(write(tmp_path, """
declared:
  - {id: switch-1, kind: other, watts: 45, name: ToR switch}
  - {id: shelf-1, kind: platform, watts: 120.5}
"""), env={})
    assert [(d.id, d.kind, d.watts, d.name) for d in cfg.section("declared")] == [
        ("switch-1", "other", 45.0, "ToR switch"), ("shelf-1", "platform", 120.5, None)]
    assert "- id: switch-1" in config.dump(cfg)


def test_declared_from_the_environment():
    cfg = config.load(env={"CARBONMETER_DECLARED": "[{id: sw, kind: other, watts: 30}]",
                           "CARBONMETER_REDFISH_URL": "https://10.0.0.5"})
    assert cfg.section("declared")[0].watts == 30
    assert cfg.section("redfish").url == "https://10.0.0.5"
    with pytest.raises(ConfigError, match=r"declared\[0\]: missing key 'kind'"):
        config.load(env={"CARBONMETER_DECLARED": "[{id: sw, watts: 30}]"})
