"""The built-in defaults are read from a generated Python module, not by parsing YAML at
every start; default.yaml stays the commented reference users copy. They must not drift."""

from __future__ import annotations

import subprocess
import sys

from carbonmeter.config import default_text, defaults, load, parse_yaml


def test_the_generated_defaults_are_default_yaml() -> None:
    assert parse_yaml(default_text(), "default.yaml") == defaults.DEFAULTS, (
        "config/default.yaml changed: run python -m carbonmeter.config.defaults")


def test_regenerating_changes_nothing() -> None:
    with open(defaults.__file__, encoding="utf-8") as f:
        assert defaults.generate() == f.read()


def test_a_file_read_once_does_not_change_the_defaults_of_the_next_load(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("sampler:\n  interval_seconds: 5\ngpu:\n  devices: [0]\n")
    assert load(path, env={}).sampler.interval_seconds == 5
    cfg = load(env={})
    assert cfg.sampler.interval_seconds == defaults.DEFAULTS["sampler"]["interval_seconds"]
    assert cfg.section("gpu").devices == defaults.DEFAULTS["gpu"]["devices"] == []


def test_measuring_without_a_configuration_file_never_imports_pyyaml() -> None:
    code = ("import sys\nfrom carbonmeter import track\nwith track():\n    pass\n"
            "print('yaml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"
