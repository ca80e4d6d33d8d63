"""Totals continue across restarts; energy spent in a gap is recovered only when provable.

The probes are the real ones on fixture hardware: RAPL on a powercap tree with the kernel's
32-bit wrapping counters and advertised constraint_*_max_power_uw, NVML through the fake
library (mJ counter since driver load, driver version), and the RAM estimate. The clock
(boot time in production) is a fake a test moves, so hours of downtime take no time.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from carbonmeter import state
from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes.base import Paths
from carbonmeter.probes.nvml import NvmlProbe
from carbonmeter.probes.ram_model import RamModelProbe
from carbonmeter.probes.rapl import RaplProbe
from carbonmeter.sampler import Sampler
from tests.fakes.fake_nvml import FakeGpu, FakeNvml
from tests.fixtures.powercap import PowercapTree

C = Static(Intensity(100.0, "X", "config", "test"))
BOOT = "6a1c9a3e-0000-4000-8000-000000000001"


class Clock:
    def __init__(self) -> None:
        self.t = 5000.0

    def __call__(self) -> float:
        return self.t


def rapl_tree(root: Path, *, max_power_uw: int | None = 100_000_000) -> PowercapTree:
    """One package advertising 100 W as its maximum (so 200 W is the bound used)."""
    tree = PowercapTree(root)
    tree.add_zone("intel-rapl:0", name="package-0", start_ticks=5_000_000,
                  max_power_uw=max_power_uw)
    return tree


def energy(s: Sampler) -> dict[str, float]:
    return {d.device.id: d.energy_j for d in s.latest.devices}


def unmeasured(s: Sampler) -> dict[str, float]:
    return {d.device.id: d.unmeasured_s for d in s.latest.devices}


def sampler(tree: PowercapTree, clock: Clock, *, ram: bool = False,
            joules: float | None = None) -> Sampler:
    """A sampler over the tree's package (and the RAM estimate) after its first reading;
    with `joules`, those are spent and read one second later."""
    probes = [RaplProbe(Paths(sysfs=tree.root))]
    if ram:
        probes.append(RamModelProbe(Paths(), watts_per_gb=1))
    s = Sampler(probes, C, pue=1.0, interval=1.0, clock=clock)
    s.sample()
    if joules is not None:
        tree.advance("intel-rapl:0", joules)
        clock.t += 1
        s.sample()
    return s


def restart(old: Sampler, probes: list, clock: Clock, tmp_path: Path, *,
            boot: str = BOOT, downtime: float) -> Sampler:
    """Checkpoint `old` to a real state file, stop it, let `downtime` pass, start anew."""
    store = state.Store(tmp_path / "state.json")
    assert store.save(BOOT, old.export())
    old.close()
    clock.t += downtime
    new = Sampler(probes, C, pue=1.0, interval=1.0, clock=clock)
    new.restore(store.load(), boot)
    return new


def test_rapl_downtime_recovered_from_the_counter(tmp_path):
    tree = rapl_tree(tmp_path / "sys")
    clock = Clock()
    s = sampler(tree, clock, joules=50)
    assert energy(s) == {"package-0": pytest.approx(50, abs=1e-3)}
    tree.advance("intel-rapl:0", 3000)  # spent while down: 10 min at 5 W
    s = restart(s, [RaplProbe(Paths(sysfs=tree.root))], clock, tmp_path, downtime=600)
    assert energy(s) == {"package-0": pytest.approx(50, abs=1e-3)}  # restored before reading
    s.sample()
    assert energy(s) == {"package-0": pytest.approx(3050, abs=1e-3)}
    assert unmeasured(s) == {"package-0": 0.0}


def test_rapl_wrap_while_down_is_recovered_exactly(tmp_path):
    tree = rapl_tree(tmp_path / "sys")
    clock = Clock()
    top = tree.max_energy_range_uj("intel-rapl:0") / 1e6
    tree.advance("intel-rapl:0", top - 30 - tree.energy_uj("intel-rapl:0") / 1e6)
    s = sampler(tree, clock)
    start = tree.true_energy_uj("intel-rapl:0")
    tree.advance("intel-rapl:0", 100)  # crosses the wrap while the exporter is down
    assert tree.wraps("intel-rapl:0") == 1
    s = restart(s, [RaplProbe(Paths(sysfs=tree.root))], clock, tmp_path, downtime=60)
    s.sample()
    true = float(tree.true_energy_uj("intel-rapl:0") - start) / 1e6
    assert energy(s)["package-0"] == pytest.approx(true, abs=2e-6)


def test_rapl_downtime_beyond_one_wrap_period_is_unmeasured(tmp_path):
    """262 kJ at 200 W is 1311 s: after 2000 s down, any number of wraps could have passed."""
    tree = rapl_tree(tmp_path / "sys")
    clock = Clock()
    s = sampler(tree, clock)
    tree.advance("intel-rapl:0", 20_000)
    s = restart(s, [RaplProbe(Paths(sysfs=tree.root))], clock, tmp_path, downtime=2000)
    s.sample()
    assert energy(s) == {"package-0": 0.0}
    assert unmeasured(s) == {"package-0": pytest.approx(2000)}
    tree.advance("intel-rapl:0", 7)  # and it counts on from the new reading
    clock.t += 1
    s.sample()
    assert energy(s) == {"package-0": pytest.approx(7, abs=1e-3)}


def test_impossible_increase_is_a_reset_not_energy(tmp_path):
    """Without constraint files the bound is 1 kW. A counter that moved by almost a whole
    range (261 kJ) in 60 s would need 4 kW: it was reset (or wrapped twice), not spent."""
    tree = rapl_tree(tmp_path / "sys", max_power_uw=None)
    clock = Clock()
    s = sampler(tree, clock)
    tree.advance("intel-rapl:0", tree.max_energy_range_uj("intel-rapl:0") / 1e6 - 1000)
    s = restart(s, [RaplProbe(Paths(sysfs=tree.root))], clock, tmp_path, downtime=60)
    s.sample()
    assert energy(s) == {"package-0": 0.0} and unmeasured(s) == {"package-0": 60.0}


def test_after_a_reboot_counters_are_not_trusted_and_the_gap_is_wall_clock(tmp_path):
    tree = rapl_tree(tmp_path / "sys")
    clock = Clock()
    s = sampler(tree, clock, ram=True, joules=40)
    store = state.Store(tmp_path / "state.json")
    checkpoint = s.export()
    for d in checkpoint["devices"]:  # the checkpoint was taken an hour ago, by wall clock
        d["wall"] -= 3600
    store.save(BOOT, checkpoint)
    s.close()
    tree.advance("intel-rapl:0", 100)
    clock.t = 12.0  # a new boot: the boot-time clock starts again
    s = Sampler([RaplProbe(Paths(sysfs=tree.root)), RamModelProbe(Paths(), watts_per_gb=1)],
                C, pue=1.0, interval=1.0, clock=clock)
    s.restore(store.load(), "another-boot")
    s.sample()
    assert energy(s)["package-0"] == pytest.approx(40, abs=1e-3)
    for device in ("package-0", "ram"):
        assert unmeasured(s)[device] == pytest.approx(3600, abs=5)


def test_nvml_counter_recovered_only_while_it_provably_continued(tmp_path):
    gpu = FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-a1", power_mw=200_000, energy_mj=1_000_000)
    fake = FakeNvml([gpu])
    clock = Clock()
    s = Sampler([NvmlProbe(nvml=fake)], C, pue=1.0, interval=1.0, clock=clock)
    s.sample()
    gpu.advance(30)  # 6 kJ while down, counter increasing: recovered
    s = restart(s, [NvmlProbe(nvml=fake)], clock, tmp_path, downtime=30)
    s.sample()
    assert energy(s) == {"gpu-0": pytest.approx(6000)} and unmeasured(s) == {"gpu-0": 0.0}

    unknown = 0.0
    for why, fake, downtime in [
        ("the driver was upgraded and reloaded while down: its counter starts again",
         FakeNvml([FakeGpu(uuid="GPU-a1", energy_mj=5_000)], driver_version="560.28.03"), 40),
        ("the same driver reloaded: the counter went back",
         FakeNvml([FakeGpu(uuid="GPU-a1", energy_mj=1_000)], driver_version="560.28.03"), 5),
        ("another driver whose counter happens to be higher proves nothing",
         FakeNvml([FakeGpu(uuid="GPU-a1", energy_mj=9e9)], driver_version="570.00.01"), 5),
    ]:
        s = restart(s, [NvmlProbe(nvml=fake)], clock, tmp_path, downtime=downtime)
        s.sample()
        unknown += downtime
        assert energy(s) == {"gpu-0": pytest.approx(6000)}, why
        assert unmeasured(s) == {"gpu-0": unknown}, why


def test_power_sources_cannot_recover_a_gap(tmp_path):
    clock = Clock()
    s = Sampler([RamModelProbe(Paths(), watts_per_gb=1)], C, pue=1.0, interval=1.0,
                clock=clock)
    s.sample()
    clock.t += 1
    s.sample()
    before = energy(s)["ram"]
    s = restart(s, [RamModelProbe(Paths(), watts_per_gb=1)], clock, tmp_path, downtime=30)
    s.sample()
    assert energy(s)["ram"] == before and unmeasured(s)["ram"] == 30.0


def test_a_device_gone_after_restart_keeps_its_total(tmp_path):
    tree = rapl_tree(tmp_path / "sys")
    clock = Clock()
    s = sampler(tree, clock, joules=80)
    s = restart(s, [RamModelProbe(Paths(), watts_per_gb=1)], clock, tmp_path, downtime=5)
    s.sample()
    clock.t += 1
    s.sample()
    assert energy(s)["package-0"] == pytest.approx(80, abs=1e-3)
    assert s.latest.host_energy_j == pytest.approx(80 + energy(s)["ram"], abs=1e-3)


def test_a_stopped_process_is_a_gap_judged_like_downtime(tmp_path):
    """More than two intervals between readings (SIGSTOP, suspend): the counter source
    recovers the energy, the estimate counts the time as unmeasured."""
    tree = rapl_tree(tmp_path / "sys")
    clock = Clock()
    s = sampler(tree, clock, ram=True)
    clock.t += 1
    s.sample()
    ram_before = energy(s)["ram"]
    tree.advance("intel-rapl:0", 900)
    clock.t += 30
    s.sample()
    assert energy(s)["package-0"] == pytest.approx(900, abs=1e-3)
    assert energy(s)["ram"] == ram_before
    assert unmeasured(s) == {"package-0": 0.0, "ram": 30.0}


def test_wall_clock_jumps_create_no_energy(monkeypatch):
    """time.time() jumps a day forward and back between samples; intervals are timed on
    the boot-time clock, so energy is the constant power times the real elapsed time."""
    import carbonmeter.guard
    import carbonmeter.sampler

    real = time.time
    offset = {"s": 0.0}
    monkeypatch.setattr(time, "time", lambda: real() + offset["s"])
    assert carbonmeter.sampler.time.time is time.time and carbonmeter.guard.time.time is time.time
    s = Sampler([RamModelProbe(Paths(), watts_per_gb=1)], C, pue=1.0, interval=0.1)
    watts = s.probes[0].watts
    start = state.clock()
    s.sample()
    for jump in (86400.0, -86400.0, 3600.0, -7200.0):
        offset["s"] += jump
        time.sleep(0.02)
        s.sample()
    elapsed = state.clock() - start
    assert 0 < energy(s)["ram"] <= watts * elapsed
    assert energy(s)["ram"] == pytest.approx(watts * elapsed, rel=0.5)
    assert unmeasured(s) == {"ram": 0.0}
    s.close()
