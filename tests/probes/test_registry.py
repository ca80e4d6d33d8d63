"""The probe registry: every probe declares itself in its own module, nothing lists them.

A new probe is its module (with a SPEC), its section of the default configuration and its
tests; discovery, the configuration's sections, `probes.disabled` and `carbonmeter probes`
follow from the SPEC alone.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import yaml

from carbonmeter import config
from carbonmeter.config import default_text
from carbonmeter.probes import registry
from carbonmeter.probes.base import HOST


def test_discovery_order_is_sensors_then_meters_then_declared_then_estimates():
    assert [s.name for s in registry()] == [
        "rapl", "amd_energy", "hwmon", "nvml", "powermetrics", "powergadget", "redfish",
        "ipmi", "declared", "cpu_model", "ram_model", "platform_model"]
    by_name = {s.name: s for s in registry()}
    assert by_name["cpu_model"].replaces == {"cpu"} and by_name["amd_energy"].replaces == {"cpu"}
    assert by_name["ram_model"].replaces == {"dram"}
    assert by_name["platform_model"].replaces == {HOST, "platform"}
    assert by_name["ipmi"].replaces == {HOST} and by_name["redfish"].replaces == {HOST}


def test_every_probe_section_is_documented_in_the_default_configuration():
    documented = yaml.safe_load(default_text())
    for spec in registry():
        if spec.section:
            assert spec.section in documented, f"{spec.name}: no {spec.section}: in default.yaml"
    assert set(documented) == set(config.sections())


def test_probes_disabled_accepts_exactly_the_registered_names(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("probes: {disabled: [nvml, ram_model]}\n")
    assert config.load(f, env={}).probes.disabled == ["nvml", "ram_model"]
    f.write_text("probes: {disabled: [gpu]}\n")
    try:
        config.load(f, env={})
    except config.ConfigError as e:
        assert "'gpu' is not one of rapl, amd_energy, hwmon, nvml" in str(e)
    else:
        raise AssertionError("an unknown probe name was accepted")


def test_a_probe_added_as_one_module_is_configured_discovered_and_listed(tmp_path):
    """A module with a SPEC beside the others: its section is read from the file (and
    from CARBONMETER_* variables), discovery runs it in its order, `carbonmeter probes`
    lists it, and probes.disabled knows its name. Nothing else was edited."""
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "bench_psu.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass, field
        from carbonmeter.probes.base import (Device, Probe, ProbeRead, ProbeSpec, Reading,
                                             limits)

        @dataclass(frozen=True)
        class BenchPsuConfig:
            watts: float = field(default=12.5, **limits(min=0, max=1000))

        class BenchPsu(Probe):
            name = "bench_psu"
            covers = frozenset({"other"})
            def __init__(self, watts):
                self.devices = (Device("psu", "other", self.name, mean_power=True),)
                self.modes = {"psu": f"{watts:g} W from a bench supply"}
                self.watts = watts
            def read(self):
                return ProbeRead([Reading(self.devices[0], power_w=self.watts)], [])

        SPEC = ProbeSpec("bench_psu", order=95, section="bench_psu", settings=BenchPsuConfig,
                         make=lambda s, ctx: BenchPsu(s.watts))
        '''))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {disabled: [rapl, nvml, ipmi, hwmon]}\nbench_psu: {watts: 40}\n")
    run = textwrap.dedent(f'''
        import sys
        import carbonmeter.probes
        carbonmeter.probes.__path__.append({str(extra)!r})
        from carbonmeter.cli import main
        sys.exit(main(sys.argv[1:]))
        ''')
    out = subprocess.run([sys.executable, "-c", run, "probes", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    at = next(n for n, line in enumerate(lines) if line.split() == ["bench_psu", "available"])
    assert lines[at + 1].strip() == "psu (other, measured)"
    assert lines[at + 2].strip() == "psu: 40 W from a bench supply"
    names = [line.split()[0] for line in lines if line and not line.startswith(" ")][:12]
    assert names.index("bench_psu") == names.index("declared") + 1  # order 95
    env_set = subprocess.run([sys.executable, "-c", run, "config", "check", str(cfg)],
                             env={"CARBONMETER_BENCH_PSU_WATTS": "7", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True)
    assert env_set.returncode == 0, env_set.stderr
    assert "bench_psu:\n  watts: 7" in env_set.stdout
    cfg.write_text("bench_psu: {watts: -1}\n")
    bad = subprocess.run([sys.executable, "-c", run, "config", "check", str(cfg)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert f"{cfg}: bench_psu.watts: -1 is out of range from 0 to 1000" in bad.stderr
