"""What a newcomer types: `key: ""` for "none" (as default.yaml's comments say), and a
misspelt CARBONMETER_ variable, which must be answered with the name meant, in a line short
enough to read in a pod's log."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carbonmeter import app, config
from carbonmeter.config import ConfigError


def test_empty_state_path_turns_persistence_off(tmp_path, monkeypatch):
    """default.yaml: "Empty: no state file". The exporter then writes none, anywhere."""
    path = tmp_path / "c.yaml"
    path.write_text(f'state: {{path: ""}}\nserver: {{listen: "127.0.0.1:0"}}\n'
                    f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                    "probes: {disabled: [nvml, ipmi]}\n")
    cfg = config.load(path, env={})
    assert cfg.state.path is None
    monkeypatch.chdir(tmp_path)
    built = app.build(cfg)
    try:
        assert "checkpoint" not in {p.name for p in built.parts}
    finally:
        built.sampler.close()
        built.endpoint.server.server_close()
    assert list(tmp_path.iterdir()) == [path]  # no state file, no directory for one


def test_empty_optional_strings_are_empty_everywhere(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('server: {web_config_file: ""}\nemissions_log: {path: ""}\n'
                    'pushgateway: {url: ""}\n')
    cfg = config.load(path, env={})
    assert (cfg.server.web_config_file, cfg.emissions_log.path, cfg.pushgateway.url) == \
        (None, None, None)


def test_required_strings_are_still_required(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('server: {listen: ""}\n')
    with pytest.raises(ConfigError, match=r"server\.listen: must be a non-empty string"):
        config.load(path, env={})


@pytest.mark.parametrize(("var", "meant"), [
    ("CARBONMETER_CARBON_REGOIN", "'CARBONMETER_CARBON_REGION'"),
    ("CARBONMETER_STATE_PAHT", "'CARBONMETER_STATE_PATH'"),
    ("CARBONMETER_SAMPLER_INTERVAL", "'CARBONMETER_SAMPLER_INTERVAL_SECONDS'"),
    ("CARBONMETER_DECLARD", "'CARBONMETER_DECLARED'"),
])
def test_misspelt_variable_names_what_was_meant_in_one_short_line(var, meant):
    with pytest.raises(ConfigError) as e:
        config.load(env={var: "x"})
    message = str(e.value)
    assert f"unknown variable {var}; did you mean {meant}?" in message
    assert len(message) < 200, message


def test_unknown_key_of_a_known_section_lists_that_section_only():
    with pytest.raises(ConfigError) as e:
        config.load(env={"CARBONMETER_STATE_WHERE": "x"})
    assert str(e.value) == ("environment: unknown variable CARBONMETER_STATE_WHERE: section "
                            "state has the keys path, checkpoint_seconds "
                            "(CARBONMETER_STATE_<KEY>)")


def test_the_command_prints_one_line_and_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "probes"], capture_output=True,
                         text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "CARBONMETER_NOTHING_LIKE_IT": "1"})
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "sections: server, sampler" in lines[0], out.stderr
    assert len(lines[0]) < 400
