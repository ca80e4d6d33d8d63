"""Devices restored from the state file whose probe can no longer run here.

A state file from a host with a powercap tree, restored where there is none (a container
started without the /sys mount, a kernel without the RAPL driver): the probe that measured
those devices must be reported down, with its reason, so the shipped CarbonmeterProbeDown
alert (`carbonmeter_probe_up == 0`) fires, and their time must count as unmeasured instead of
the totals sitting flat as if the hardware spent nothing. A probe that stood down (disabled,
or replaced by a better source) is no failure: its restored devices stay as they were.
"""

from __future__ import annotations

import json
import time

import pytest

from carbonmeter import state
from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes.base import Device
from carbonmeter.sampler import Sampler
from tests.fakes.probe import ScriptedProbe
from tests.fixtures.powercap import two_sockets_with_dram
from tests.helpers import wait_for
from tests.test_end_to_end import metrics, start_serve, stop
from tests.test_restore import Clock

C = Static(Intensity(100.0, "X", "config", "test"))
BOOT = "6a1c9a3e-0000-4000-8000-000000000001"


def sample(text: str, series: str) -> float:
    return float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith(series + " ")))


def test_restart_without_the_powercap_tree_reports_rapl_down(tmp_path):
    tree = two_sockets_with_dram(tmp_path / "sys")
    state_file = tmp_path / "carbonmeter-state.json"  # CARBONMETER_STATE_PATH (conftest.py)
    common = "probes: {disabled: [nvml, ipmi]}\n"
    proc, target = start_serve(tmp_path, f"paths: {{sysfs: {tmp_path / 'sys'}}}\n" + common)
    try:
        wait_for(lambda: 'device="dram-1"' in metrics(target), what="the first sample")
        tree.advance("intel-rapl:0", 40.0)
        pkg = 'carbonmeter_energy_joules_total{device="package-0",kind="cpu",source="rapl"}'
        wait_for(lambda: sample(metrics(target), pkg) > 39.9, what="the 40 J")
    finally:
        assert stop(proc) == 0
    saved = next(d["energy_j"] for d in json.loads(state_file.read_text())["devices"]
                 if d["id"] == "package-0")
    assert saved == pytest.approx(40.0, abs=1e-3)  # in the counter's ticks

    (tmp_path / "bare").mkdir()  # the same host, now without /sys/class/powercap
    proc, target = start_serve(tmp_path, f"paths: {{sysfs: {tmp_path / 'bare'}}}\n" + common)
    try:
        wait_for(lambda: 'probe="cpu_model"' in metrics(target), what="the restart")
        first = metrics(target)
        time.sleep(1.0)
        second = metrics(target)
    finally:
        assert stop(proc) == 0
    assert sample(first, 'carbonmeter_probe_up{probe="rapl"}') == 0.0
    assert sample(first, 'carbonmeter_probe_up{probe="cpu_model"}') == 1.0
    assert sample(first, pkg) == pytest.approx(saved)  # kept, never reset ...
    unmeasured = 'carbonmeter_unmeasured_seconds_total{device="package-0",kind="cpu",' \
        'source="rapl"}'
    # ... and no longer flat in time: the second scrape has a second more unmeasured
    grew = sample(second, unmeasured) - sample(first, unmeasured)
    assert 0.6 < grew < 1.6, grew
    assert sample(second, pkg) == pytest.approx(saved)
    log = (tmp_path / "serve.log").read_text()
    assert "probe rapl: cannot run here (no RAPL zones under" in log
    assert "the state file holds 4 device(s) it measured (package-0, package-1, dram-0, " \
        "dram-1)" in log


def _restored(tmp_path, devices: list[Device], clock: Clock) -> state.Restored:
    """A checkpoint of `devices` at 10 J each, taken by a sampler that read them."""
    probe = ScriptedProbe.counting(*devices, joules=10.0, name=devices[0].source)
    s = Sampler([probe], C, pue=1.0, interval=1.0, clock=clock)
    s.sample()
    clock.t += 1
    s.sample()
    store = state.Store(tmp_path / "state.json")
    assert store.save(BOOT, s.export())
    return store.load()


def test_unmeasured_time_grows_with_the_clock_and_survives_the_next_restart(tmp_path):
    pkg = Device("package-0", "cpu", "rapl", wrap_uj=262143328850)
    clock = Clock()
    restored = _restored(tmp_path, [pkg], clock)
    clock.t += 30  # down for 30 s
    estimate = ScriptedProbe.counting(Device("cpu", "cpu", "cpu_model", estimated=True),
                                      name="cpu_model")
    s = Sampler([estimate], C, pue=1.0, interval=1.0, clock=clock,
                unavailable={"rapl": "no RAPL zones"})
    s.restore(restored, BOOT)
    down = {p.name: p for p in s.latest.probes}["rapl"]
    assert (down.up, down.last_error) == (False, "no RAPL zones")
    s.sample()
    by_id = {d.device.id: d for d in s.latest.devices}
    assert by_id["package-0"].energy_j == pytest.approx(10.0)
    assert by_id["package-0"].unmeasured_s == pytest.approx(30.0)  # the downtime
    clock.t += 5
    s.sample()
    assert {d.device.id: d.unmeasured_s for d in s.latest.devices}["package-0"] == \
        pytest.approx(35.0)
    # The probe comes back at the next start: the time counted already is not counted again,
    # and the old counter, which proves nothing after that, recovers nothing.
    store = state.Store(tmp_path / "again.json")
    assert store.save(BOOT, s.export())
    clock.t += 4
    back = ScriptedProbe.counting(pkg, joules=10.0, name="rapl")
    s2 = Sampler([back], C, pue=1.0, interval=1.0, clock=clock)
    s2.restore(store.load(), BOOT)
    assert "rapl" in {p.name for p in s2.latest.probes if p.up}
    s2.sample()
    total = {d.device.id: d for d in s2.latest.devices}["package-0"]
    assert total.unmeasured_s == pytest.approx(39.0) and total.energy_j == pytest.approx(10.0)


def test_a_probe_that_stood_down_is_not_reported_down(tmp_path):
    """Yesterday the CPU was estimated; today RAPL is readable, so cpu_model stands down."""
    clock = Clock()
    restored = _restored(tmp_path, [Device("cpu", "cpu", "cpu_model", estimated=True)], clock)
    rapl = ScriptedProbe.counting(Device("package-0", "cpu", "rapl"), name="rapl")
    s = Sampler([rapl], C, pue=1.0, interval=1.0, clock=clock, unavailable={})
    s.restore(restored, BOOT)
    clock.t += 10
    s.sample()
    assert [p.name for p in s.latest.probes] == ["rapl"]
    assert {d.device.id: d.unmeasured_s for d in s.latest.devices}["cpu"] == 0.0
