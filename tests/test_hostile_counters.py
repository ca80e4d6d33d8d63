"""Counters that lie: nothing false is counted, and the totals never go back.

Each case is a row of what a misbehaving driver (or a script rewriting sysfs) can make an
energy counter read, played on the real probes over fixture trees: powercap zones with the
kernel's layout and 32-bit wrap arithmetic (tests/fixtures/powercap.py), hwmon chips
(tests/fixtures/hwmon.py), the fake NVML library. The sampler is the exporter's own, on a
clock the test moves 0.2 s a sample, as `--interval 0.2` would; the zone advertises 100 W
(constraint_0_max_power_uw), so 200 W is the bound the accounting holds it to.

What must happen, whatever the source: a value that is not a decimal integer within the
counter's range is the probe's error for that read, nothing is counted and the last good
value stays the baseline; a decrease no wrap could explain, a rise no device could spend,
a changed range or a re-registered zone is a reset: nothing counted for the interval, its
time unmeasured, one log line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes import rapl as rapl_module
from carbonmeter.probes.amd_energy import WRAP_32BIT_UJ, AmdEnergyProbe
from carbonmeter.probes.base import Paths
from carbonmeter.probes.hwmon import HwmonProbe
from carbonmeter.probes.nvml import NvmlProbe
from carbonmeter.probes.powergadget import parse_log
from carbonmeter.probes.powermetrics import sample_energy_mj
from carbonmeter.probes.rapl import RaplProbe
from carbonmeter.sampler import Sampler
from tests.carbon.test_live_intensity import sample_value
from tests.fakes.fake_nvml import FakeGpu, FakeNvml
from tests.fixtures.hwmon import HwmonTree, amd_energy_chip, xe_card
from tests.fixtures.powercap import PowercapTree
from tests.fixtures.powerlog import Load, header, rows
from tests.fixtures.powermetrics import monterey, sonoma
from tests.helpers import wait_for
from tests.test_end_to_end import metrics, start_serve, stop

LOADS = [Load(processor=15.0, ia=8.0, dram=2.5, gt=1.25)]
C = Static(Intensity(100.0, "X", "config", "test"))
ZONE = "intel-rapl:0"
DT = 0.2
RATED_UW = 100_000_000  # 100 W advertised; the bound is twice that


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Rig:
    """A sampler over `probes` on a clock moved DT per sample."""

    def __init__(self, *probes) -> None:
        self.clock = Clock()
        self.sampler = Sampler(list(probes), C, pue=1.0, interval=DT, clock=self.clock)
        self.history: list[float] = []
        self.sample()

    def sample(self, device: str | None = None) -> float:
        """One sample DT after the last; the device's energy total after it."""
        self.clock.t += DT
        self.sampler.sample()
        total = self.energy(device) if device else 0.0
        self.history.append(total)
        return total

    def read(self, device: str) -> float:
        """Sample until the probes read again (a probe that read nothing is retried with
        backoff, skipping samples meanwhile); the device's total after it."""
        for _ in range(50):
            total = self.sample(device)
            if all(p.up and not p.last_error for p in self.sampler.latest.probes):
                return total
        raise AssertionError(f"the probes did not read again: {self.last_error()}")

    def device(self, device: str):
        return next(d for d in self.sampler.latest.devices if d.device.id == device)

    def energy(self, device: str) -> float:
        return self.device(device).energy_j

    def unmeasured(self, device: str) -> float:
        return self.device(device).unmeasured_s

    def errors(self) -> int:
        return sum(p.errors_total for p in self.sampler.latest.probes)

    def last_error(self) -> str:
        return " ".join(p.last_error for p in self.sampler.latest.probes)


@pytest.fixture
def rapl(tmp_path: Path):
    tree = PowercapTree(tmp_path / "sys")
    tree.add_zone(ZONE, name="package-0", start_ticks=2_000_000, max_power_uw=RATED_UW)
    probe = RaplProbe(Paths(sysfs=tree.root))
    rig = Rig(probe)
    yield tree, rig
    probe.close()


def raw_uj(tree: PowercapTree, uj: int) -> None:
    tree.write_raw(ZONE, "energy_uj", f"{uj}\n")


def spend(tree: PowercapTree, rig: Rig, joules: float, steps: int) -> None:
    """Spend `joules` a sample, for `steps` samples (the zone counting honestly)."""
    for _ in range(steps):
        tree.advance(ZONE, joules)
        rig.sample("package-0")


def reset_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "energy counter reset" in r.getMessage()]


# -- the rows: what the sysfs file did, and what must be counted ---------------------------------


def test_went_back_one_joule_is_a_reset_not_a_wrap(rapl, caplog):
    """Before: +262,142 J, taken as one full wrap. A wrap would mean 262 kJ in 0.2 s, which
    200 W cannot spend: the counter was reset, and counts on from where it now is."""
    tree, rig = rapl
    spend(tree, rig, 30.0, 2)
    before, unmeasured = rig.energy("package-0"), rig.unmeasured("package-0")
    now = tree.energy_uj(ZONE)
    raw_uj(tree, now - 1_000_000)
    after = rig.sample("package-0")
    assert after == before
    assert rig.unmeasured("package-0") == pytest.approx(unmeasured + DT)
    (line,) = reset_lines(caplog)
    assert f"went back from {now} to {now - 1_000_000}" in line and "200 W" in line
    raw_uj(tree, now - 1_000_000 + 25_000_000)  # and it goes on counting from there
    assert rig.sample("package-0") == pytest.approx(before + 25.0)


def test_zone_registered_again_with_its_counter_restarted(rapl, caplog):
    """Before: +222,129 J. The zone's files are new (driver reload, CPU hotplug): a new
    counter, whether it starts below the old value or above it."""
    tree, rig = rapl
    spend(tree, rig, 30.0, 2)
    before = rig.energy("package-0")
    tree.remove_zone(ZONE)
    tree.add_zone(ZONE, name="package-0", start_ticks=16_384, max_power_uw=RATED_UW)  # 1 J
    assert rig.sample("package-0") == before
    assert rig.unmeasured("package-0") == pytest.approx(DT)
    assert len(reset_lines(caplog)) == 1
    spend(tree, rig, 20.0, 1)
    assert rig.energy("package-0") == pytest.approx(before + 20.0, abs=1e-4)
    # again, now starting 50 J above what it read: a rise of 50 J in 0.2 s is within what
    # 200 W may spend in a second, yet it is another counter and counts nothing
    high = tree.energy_uj(ZONE) + 50_000_000
    unit = tree.unit_uj(ZONE)
    tree.remove_zone(ZONE)
    tree.add_zone(ZONE, name="package-0", max_power_uw=RATED_UW,
                  start_ticks=int(high / unit) + 1)
    total = rig.energy("package-0")
    assert rig.sample("package-0") == total
    assert "range or identity changed" in reset_lines(caplog)[-1]
    spend(tree, rig, 20.0, 1)
    assert rig.energy("package-0") == pytest.approx(total + 20.0, abs=1e-4)


def test_max_energy_range_shrinks(rapl, caplog):
    """Before: 262,143 J for 1,000 J true (every 1 kJ wrap taken as a 262 kJ one). The new
    range is read at every read: the change is a reset, and wraps are at the new range."""
    tree, rig = rapl
    spend(tree, rig, 30.0, 2)
    before = rig.energy("package-0")
    range_uj = 1_000_000_000
    tree.write_raw(ZONE, "max_energy_range_uj", f"{range_uj}\n")
    wrap = range_uj * 2**32 / (2**32 - 1)  # one energy unit more than the range, as ever
    true_uj, raw = 0, 400_000_000
    raw_uj(tree, raw)
    assert rig.sample("package-0") == before
    assert "range or identity changed" in reset_lines(caplog)[-1]
    for _ in range(25):  # 1,000 J at 200 J/s, crossing the new range's wrap
        true_uj += 40_000_000
        raw = int((raw + 40_000_000) % wrap)
        raw_uj(tree, raw)
        assert rig.sample("package-0") >= rig.history[-2]
    assert rig.energy("package-0") - before == pytest.approx(1_000.0, abs=1e-3)
    assert len(reset_lines(caplog)) == 1


def test_three_times_the_range_then_the_true_value(rapl):
    """Before: +786,430 J, then the counter fell by 524,287 J. A value above the range is
    an error for that read; the true value is then counted from the last good one."""
    tree, rig = rapl
    spend(tree, rig, 30.0, 2)
    before, errors = rig.energy("package-0"), rig.errors()
    raw_uj(tree, 3 * tree.max_energy_range_uj(ZONE))
    assert rig.sample("package-0") == before
    assert rig.errors() == errors + 1
    assert "is beyond its range" in rig.last_error()
    tree.advance(ZONE, 30.0)  # writes the true value again: 60 J since the last good read
    tree.advance(ZONE, 30.0)
    assert rig.sample("package-0") == pytest.approx(before + 60.0, abs=1e-4)
    assert rig.unmeasured("package-0") == 0.0
    assert rig.sampler.latest.probes[0].up


def test_counted_past_the_range_then_wrapped(rapl):
    """Before: the counter fell from 1,000 J to 110 J. Reads above the reported range are
    errors; the wrap that follows counts from the last value within it: never backwards,
    never more than was spent."""
    tree, rig = rapl
    top = tree.max_energy_range_uj(ZONE)
    raw_uj(tree, top - 40_000_000)
    rig.sample("package-0")
    raw_uj(tree, top - 20_000_000)
    before = rig.sample("package-0")
    assert before == pytest.approx(20.0)
    for over in (10_000_000, 30_000_000):  # the register counts on, past what it reported
        raw_uj(tree, top + over)
        assert rig.sample("package-0") == before
    raw_uj(tree, 30_000_000)  # then wraps: 80 J were spent, 50 J can be proved
    after = rig.read("package-0")
    assert before < after <= before + 80.0
    assert after == pytest.approx(before + 20.0 + 30.0, abs=1e-3)


def test_forty_digits_then_a_valid_value(rapl):
    """Before: the counter went to -1e26 J. Forty digits are no counter reading."""
    tree, rig = rapl
    spend(tree, rig, 30.0, 2)
    before = rig.energy("package-0")
    raw_uj(tree, int("9" * 40))
    assert rig.sample("package-0") == before
    assert "not a decimal integer" in rig.last_error()
    tree.advance(ZONE, 25.0)
    assert rig.read("package-0") == pytest.approx(before + 25.0, abs=1e-4)


@pytest.mark.parametrize("text", ["-5\n", "+12\n", "1_000\n", "1e9\n", "0x10\n", "12 34\n",
                                  "\u0661\u0662\n", "nan\n"])
def test_anything_but_a_decimal_integer_is_an_error(rapl, text):
    """int() would take several of these (a sign, underscores, Arabic-Indic digits)."""
    tree, rig = rapl
    spend(tree, rig, 30.0, 1)
    before, errors = rig.energy("package-0"), rig.errors()
    tree.write_raw(ZONE, "energy_uj", text)
    assert rig.sample("package-0") == before
    assert rig.errors() == errors + 1 and "not a decimal integer" in rig.last_error()
    spend(tree, rig, 30.0, 1)
    assert rig.energy("package-0") == pytest.approx(before + 30.0, abs=1e-4)


def test_a_rise_no_device_could_spend_is_a_reset(rapl, caplog):
    """A counter within its range that jumps by 100 kJ in 0.2 s (a restarted counter, a
    write from elsewhere) counts nothing: the bound is 200 W, however the value got there."""
    tree, rig = rapl
    spend(tree, rig, 30.0, 1)
    before = rig.energy("package-0")
    tree.advance(ZONE, 100_000)
    assert rig.sample("package-0") == before
    assert "it rose from" in reset_lines(caplog)[-1]
    spend(tree, rig, 30.0, 1)
    assert rig.energy("package-0") == pytest.approx(before + 30.0, abs=1e-4)


def test_an_honest_wrap_is_still_counted(tmp_path: Path, caplog):
    tree = PowercapTree(tmp_path / "sys")
    tree.add_zone(ZONE, name="package-0", start_ticks=2**32 - 250_000, max_power_uw=RATED_UW)
    probe = RaplProbe(Paths(sysfs=tree.root))
    rig = Rig(probe)
    spend(tree, rig, 30.0, 3)  # 15 J from the top: wraps in the first step
    assert tree.wraps(ZONE) == 1
    assert rig.energy("package-0") == pytest.approx(tree.true_energy_j(ZONE), abs=1e-3)
    assert not reset_lines(caplog)
    probe.close()


def test_a_zone_that_appears_while_running_is_picked_up(rapl, caplog, monkeypatch):
    """A second package registered after start (a socket's CPUs brought online), found at
    the probe's next look (every rapl.PICKUP_S, here every read)."""
    monkeypatch.setattr(rapl_module, "PICKUP_S", 0.0)
    tree, rig = rapl
    caplog.set_level(logging.INFO)
    spend(tree, rig, 30.0, 1)
    tree.add_zone("intel-rapl:1", name="package-1", start_ticks=9_999, max_power_uw=RATED_UW)
    tree.add_zone("intel-rapl:1:0", name="dram", start_ticks=77)
    rig.sample()
    ids = [d.device.id for d in rig.sampler.latest.devices]
    assert ids == ["package-0", "package-1", "dram-1"]
    assert "zone intel-rapl:1 appeared: reading it as package-1" in caplog.text
    tree.advance("intel-rapl:1", 12.5)
    tree.advance("intel-rapl:1:0", 2.0)
    rig.sample()
    assert rig.energy("package-1") == pytest.approx(12.5, abs=1e-4)
    assert rig.energy("dram-1") == pytest.approx(2.0, abs=1e-4)


# -- the same rules for every counter source -----------------------------------------------------


def test_hwmon_energy_counters(tmp_path: Path, caplog):
    """xe's energy counters (64-bit µJ, no wrap): a bad value is an error, a decrease, or a
    rise beyond 100 kW (the bound of a device that declares none), is a reset."""
    tree = HwmonTree(tmp_path)
    chip = xe_card(tree, card_uj=5_000_000)
    probe = HwmonProbe(Paths(sysfs=tree.root), interval=DT)
    rig = Rig(probe)
    path = tree.chips[chip] / "energy1_input"
    total = 0.0
    for text, joules in [("35000000", 30.0),
                         ("-5", None), (str(2**64), None), ("9" * 40, None),
                         ("60000000", 25.0),  # from the last good value
                         ("45000000", 0.0),  # went back: reset
                         ("65000000", 20.0),
                         (str(65_000_000 + 10**11), 100_000.0),  # 100 kW for 1 s: believed
                         (str(65_000_000 + 10**11 + 10**12), 0.0)]:  # 1 MJ: reset
        path.write_text(text + "\n")
        if joules is None:
            assert rig.sample("xe-card") == total and "hwmon xe-card" in rig.last_error()
            continue
        total += joules
        assert rig.read("xe-card") == pytest.approx(total, abs=1e-6), text
    assert len(reset_lines(caplog)) == 2


def test_amd_energy_32_bit_counters(tmp_path: Path, caplog):
    """amd_energy's masked 32-bit counter (65.5 kJ range): a value above the range is a
    64-bit counter's, so it and the true value after it are changes of counter, counting
    nothing; then counting goes on, and an honest wrap is counted."""
    tree = HwmonTree(tmp_path)
    chip = amd_energy_chip(tree, cores=1, sockets=1, socket_uj=(65_480_000_000,))
    probe = AmdEnergyProbe(Paths(sysfs=tree.root))
    rig = Rig(probe)
    path = tree.chips[chip] / "energy2_input"
    assert probe.devices[0].wrap_uj == WRAP_32BIT_UJ
    for value, total in [(65_500_000_000, 20.0), (3 * WRAP_32BIT_UJ, 20.0),
                         (65_510_000_000, 20.0), (65_520_000_000, 30.0),
                         (65_520_000_000 + 30_000_000 - WRAP_32BIT_UJ, 60.0)]:  # wraps
        path.write_text(f"{value}\n")
        assert rig.read("package-0") == pytest.approx(total), value
    assert len(reset_lines(caplog)) == 2


class BrokenNvml(FakeNvml):
    """NVML as a damaged library or binding could answer: `values` in turn, then true."""

    def __init__(self, gpus, values) -> None:
        super().__init__(gpus)
        self.values = list(values)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        true = super().nvmlDeviceGetTotalEnergyConsumption(handle)
        return self.values.pop(0) if self.values else true


def test_nvml_energy_counter(caplog):
    """The total-energy counter (mJ, 64-bit, never wraps), on a board whose highest power
    limit is 700 W (so 1.4 kW bounds it): a float, a negative or a 65-bit value is an
    error; a decrease is a driver reload, a reset; and a single low reading (a glitch, not a
    reload) is a reset twice over, for the true value after it rises faster than the board
    can spend."""
    gpu = FakeGpu("NVIDIA H100", "GPU-h1", power_mw=300_000, energy_counter=True,
                  energy_mj=1_000_000, max_limit_mw=700_000)
    nvml = BrokenNvml([gpu], [])
    probe = NvmlProbe(nvml=nvml)
    assert probe.devices[0].max_power_w == 1400.0
    rig = Rig(probe)
    gpu.advance(DT)
    assert rig.sample("gpu-0") == pytest.approx(60.0)
    for bad in (1.5e6, -1, 2**64, True):
        nvml.values = [bad]
        assert rig.sample("gpu-0") == pytest.approx(60.0)
        assert "not a 64-bit count" in rig.last_error()
        gpu.advance(1.0)  # while the probe backs off
    total = rig.read("gpu-0")
    assert total == pytest.approx(60.0 + 4 * 300.0)  # proved by the true value
    assert rig.unmeasured("gpu-0") == 0.0
    nvml.values = [5]
    assert rig.read("gpu-0") == total
    assert rig.read("gpu-0") == total
    assert rig.unmeasured("gpu-0") == pytest.approx(2 * DT)
    assert len(reset_lines(caplog)) == 2
    gpu.advance(DT)
    assert rig.read("gpu-0") == pytest.approx(total + 60.0)


def test_powermetrics_samples_no_mac_could_measure_are_skipped():
    """powermetrics builds its counter from each sample's mean power: a sample whose power
    is not finite, negative or beyond 1 kW, or whose duration is not one, adds nothing (the
    counter would be +Inf, and the probe broken, from then on)."""
    good = sonoma(0, cpu_mw=1200.0, gpu_mw=300.0, ane_mw=0.0)
    assert sample_energy_mj(good) == pytest.approx({"cpu": 1200.0, "gpu": 300.0, "ane": 0.0})
    for bad in (sonoma(1, cpu_mw=1e308, gpu_mw=1.0, ane_mw=0.0),
                sonoma(1, cpu_mw=float("nan"), gpu_mw=1.0, ane_mw=0.0),
                sonoma(1, cpu_mw=-5.0, gpu_mw=1.0, ane_mw=0.0),
                sonoma(1, cpu_mw=2e6, gpu_mw=1.0, ane_mw=0.0),
                sonoma(1, cpu_mw=1.0, gpu_mw=1.0, ane_mw=0.0, elapsed_ns=-1),
                monterey(1, cpu_mj=float("inf"), gpu_mj=1, ane_mj=0, dram_mj=0)):
        with pytest.raises(ValueError, match=r"not a (measurement|sample's duration)"):
            sample_energy_mj(bad)


@pytest.mark.parametrize("cell", ["nan", "inf", "-3.0", "1e308"])
def test_power_gadget_rows_never_measured_are_skipped(cell):
    """A PowerLog row whose cumulative energy is not a finite, plausible number of joules is
    a row cut short: the log counts to its last good row."""
    lines = [header(1), *rows(LOADS, 3.0, 500)]
    good = parse_log("\n".join(lines))[1]
    cells = lines[-1].split(",")
    cells[next(i for i, c in enumerate(header(1).split(","))
               if c.startswith("Cumulative Processor Energy_0"))] = cell
    damaged = parse_log("\n".join([*lines[:-1], ",".join(cells)]))[1]
    assert damaged == parse_log("\n".join(lines[:-1]))[1]
    assert all(0 <= v <= good[k] for k, v in damaged.items())


def test_serve_survives_every_row_and_its_counter_never_goes_back(tmp_path: Path):
    """The rows again, on `carbonmeter serve` (a real process reading the tree every 0.2 s),
    each bad value held until a sample has seen it: the scraped counter never decreases,
    never exceeds what the zone spent, and every honest step after a bad value is counted."""
    tree = PowercapTree(tmp_path / "sys")
    tree.add_zone(ZONE, name="package-0", start_ticks=2_000_000, max_power_uw=RATED_UW)
    proc, target = start_serve(tmp_path, f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                                         "probes: {disabled: [nvml, cpu_model, ram_model]}\n")
    series = 'carbonmeter_{}{{device="package-0",kind="cpu",source="rapl"}}'
    seen: list[float] = []

    def scrape() -> dict[str, float]:
        text = metrics(target)
        out = {name: sample_value(text, series.format(name))
               for name in ("energy_joules_total", "unmeasured_seconds_total")}
        out["errors"] = sample_value(text, 'carbonmeter_probe_errors_total{probe="rapl"}')
        if out["energy_joules_total"] is not None:
            seen.append(out["energy_joules_total"])
        return out

    def after(what: str, changed) -> dict[str, float]:
        return wait_for(lambda: (lambda m: m if changed(m) else None)(scrape()), timeout=10,
                        what=what)

    try:
        start = after("a first sample", lambda m: m["energy_joules_total"] is not None)
        spent = 0.0
        for step in range(9):  # honest, bad, honest, bad ... honest
            before = scrape()
            if step % 2 == 0:
                tree.advance(ZONE, 10.0)
                spent += 10.0
                after(f"step {step} counted", lambda m, b=before: m["energy_joules_total"]
                      >= b["energy_joules_total"] + 10.0 - 1e-3)
                continue
            bad = [3 * tree.max_energy_range_uj(ZONE), int("9" * 40), "-5",
                   tree.max_energy_range_uj(ZONE) + 1][step // 2]
            raw_uj(tree, bad)
            after(f"bad value {bad} refused", lambda m, b=before: m["errors"] > b["errors"])
        raw_uj(tree, tree.energy_uj(ZONE) - 1_000_000)  # went back 1 J: a reset
        before = scrape()
        after("the reset", lambda m, b=before: m["unmeasured_seconds_total"]
              > b["unmeasured_seconds_total"])
    finally:
        assert stop(proc) == 0
    assert seen == sorted(seen)
    assert seen[-1] - start["energy_joules_total"] == pytest.approx(spent, abs=1e-3)
    log = (tmp_path / "serve.log").read_text()
    assert log.count("energy counter reset") == 1 and "Traceback" not in log
