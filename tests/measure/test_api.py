"""The Python API: track(), track_emissions, tasks, and CodeCarbon's EmissionsTracker.

Energy comes from the powercap fixture (the kernel's RAPL counter files, advanced by the
test inside the measured block) or from the fake NVML (pynvml's functions and errors, a GPU
with the Volta+ total-energy counter), so every figure is known exactly.
"""

from __future__ import annotations

import csv
import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from carbonmeter import EmissionsTracker, OfflineEmissionsTracker, track, track_emissions
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import find_region
from carbonmeter.measure.meter import FINE_INTERVAL_S, WRAP_GUARD_S
from tests.fakes.fake_nvml import FakeGpu, FakeNvml

PKG = "intel-rapl:0"
FR = find_region("FR").g_per_kwh
ROOT = Path(__file__).resolve().parents[2]


def grams(joules: float, pue: float = 1.0) -> float:
    return joules / 3.6e6 * pue * FR


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_nested_tasks_are_exact_and_nested(rapl, tmp_path):
    tree, cfg = rapl
    with track(config=cfg, output_file=tmp_path / "log.csv", project_name="nest") as t:
        tree.advance(PKG, 10)
        with t.task("epoch") as epoch:
            tree.advance(PKG, 5)
            with t.task("forward") as fwd:
                tree.advance(PKG, 2)
            with t.task("backward"):
                tree.advance(PKG, 3)
        tree.advance(PKG, 1)
    r = t.result
    assert r.energy_j == pytest.approx(21, abs=1e-4)
    assert r.emissions_g == pytest.approx(grams(21), rel=1e-5)
    assert r.emissions_kg == pytest.approx(r.emissions_g / 1000)
    assert r.region == "FR" and r.intensity.g_per_kwh == FR
    assert r.energy_by_kind() == {"cpu": pytest.approx(21, abs=1e-4)}
    assert [d.id for d in r.devices] == ["package-0"] and not r.devices[0].estimated
    assert [x.name for x in r.tasks] == ["epoch"]
    assert epoch.result is r.tasks[0]
    assert epoch.result.energy_j == pytest.approx(10, abs=1e-4)
    assert [x.name for x in epoch.result.tasks] == ["forward", "backward"]
    assert fwd.result.energy_j == pytest.approx(2, abs=1e-4)
    assert fwd.result.duration_s <= epoch.result.duration_s <= r.duration_s
    rows = read_csv(tmp_path / "log.csv")
    assert [x["task_name"] for x in rows] == ["", "epoch", "epoch/forward", "epoch/backward"]
    assert {x["project_name"] for x in rows} == {"nest"} and len({x["run_id"] for x in rows}) == 1
    assert float(rows[0]["energy_consumed"]) == pytest.approx(21 / 3.6e6, rel=1e-5)


def test_an_exception_inside_with_is_measured_recorded_and_raised(rapl, tmp_path):
    tree, cfg = rapl
    t = track(config=cfg, output_file=tmp_path / "log.csv")
    with pytest.raises(ZeroDivisionError), t:
        tree.advance(PKG, 4)
        with t.task("doomed"):
            tree.advance(PKG, 2)
            1 / 0  # noqa: B018
    assert t.result.error == "ZeroDivisionError"
    assert t.result.tasks[0].error == "ZeroDivisionError"
    assert t.result.energy_j == pytest.approx(6, abs=1e-4)
    rows = read_csv(tmp_path / "log.csv")
    assert [x["task_name"] for x in rows] == ["", "doomed"]


def test_decorator_measures_each_call_and_lets_exceptions_through(rapl, tmp_path):
    tree, cfg = rapl
    log = tmp_path / "log.csv"

    @track_emissions(config=cfg, output_file=log)
    def work(joules: float) -> str:
        tree.advance(PKG, joules)
        if joules > 100:
            raise RuntimeError("too hot")
        return "done"

    assert work(30) == "done"
    assert work.last_result.name == "work" and work.last_result.error == ""
    assert work.last_result.energy_j == pytest.approx(30, abs=1e-4)
    with pytest.raises(RuntimeError, match="too hot"):
        work(200)
    assert work.last_result.error == "RuntimeError"
    assert work.last_result.energy_j == pytest.approx(200, abs=1e-4)
    assert work.__name__ == "work"
    assert [float(r["energy_consumed"]) * 3.6e6 for r in read_csv(log)] == \
        [pytest.approx(30, abs=1e-4), pytest.approx(200, abs=1e-4)]


def test_bare_decorator(rapl, monkeypatch, tmp_path):
    tree, cfg = rapl
    monkeypatch.chdir(tmp_path)  # CodeCarbon's decorator writes ./emissions.csv
    monkeypatch.setenv("CARBONMETER_PATHS_SYSFS", str(cfg.parent / "sys"))
    monkeypatch.setenv("CARBONMETER_PROBES_DISABLED", "[nvml, ram_model, platform_model]")

    @track_emissions
    def f() -> int:
        tree.advance(PKG, 1)
        return 42

    assert f() == 42 and f.last_result.energy_j == pytest.approx(1, abs=1e-4)
    assert len(read_csv(tmp_path / "emissions.csv")) == 1


def test_emissions_tracker_start_flush_stop_like_codecarbon(rapl, tmp_path):
    """CodeCarbon's rows: each flush() and stop() writes the run's total so far; tasks go
    to a file of their own; results are EmissionsData in kWh and kg, PUE applied."""
    tree, cfg = rapl
    tracker = EmissionsTracker(project_name="cc", output_dir=tmp_path, config=cfg,
                               country_iso_code="FRA", pue=1.5, measure_power_secs=15)
    assert tracker.flush() is None  # not started: CodeCarbon logs an error, writes nothing
    tracker.start()
    tree.advance(PKG, 3600)
    so_far = tracker.flush()
    assert so_far == pytest.approx(grams(3600, 1.5) / 1000, rel=1e-6)
    tracker.start_task("eval")
    tree.advance(PKG, 360)
    part = tracker.stop_task("eval")
    assert part.energy_consumed == pytest.approx(360 * 1.5 / 3.6e6, rel=1e-6)  # kWh with PUE
    assert part.cpu_energy == part.energy_consumed and part.usage.energy_j == \
        pytest.approx(360, abs=1e-4)
    tree.advance(PKG, 40)
    kg = tracker.stop()
    assert kg == pytest.approx(grams(4000, 1.5) / 1000, rel=1e-6)
    assert tracker.final_emissions == kg == tracker.final_emissions_data.emissions
    assert tracker.result.energy_j == pytest.approx(4000, abs=1e-3)
    assert [t.name for t in tracker.result.tasks] == ["eval"]
    runs = read_csv(tmp_path / "emissions.csv")
    assert [float(r["emissions"]) for r in runs] == [pytest.approx(so_far, rel=1e-9),
                                                      pytest.approx(kg, rel=1e-9)]
    assert {r["task_name"] for r in runs} == {""} and len({r["started"] for r in runs}) == 1
    assert {r["project_name"] for r in runs} == {"cc"} and runs[0]["country_iso_code"] == "FRA"
    assert float(runs[0]["pue"]) == 1.5
    (tasks,) = tmp_path.glob(f"emissions_base_{tracker.run_id}.csv")
    assert [r["task_name"] for r in read_csv(tasks)] == ["eval"]
    assert tracker.stop() == kg  # stopping twice: CodeCarbon returns the last result


def test_emissions_tracker_as_context_manager_and_offline_alias(rapl, tmp_path):
    tree, cfg = rapl
    with OfflineEmissionsTracker(output_dir=tmp_path, output_file="o.csv", config=cfg,
                                 country_iso_code="FRA") as tracker:
        tree.advance(PKG, 72)
    assert tracker.final_emissions == pytest.approx(grams(72) / 1000, rel=1e-6)
    assert len(read_csv(tmp_path / "o.csv")) == 1


def test_emissions_tracker_save_to_file_false_writes_nothing(rapl, tmp_path, monkeypatch):
    _, cfg = rapl
    monkeypatch.chdir(tmp_path)
    tracker = EmissionsTracker(save_to_file=False, config=cfg)
    tracker.start()
    assert tracker.stop() == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "sys"]  # nothing new


def test_codecarbon_keywords_unknown_ones_fail_meaningless_ones_say_why(rapl, caplog,
                                                                       tmp_path):
    _, cfg = rapl
    with pytest.raises(TypeError, match="unexpected keyword argument 'measure_power_sec'"):
        EmissionsTracker(config=cfg, measure_power_sec=5)
    with caplog.at_level(logging.WARNING):
        EmissionsTracker(config=cfg, save_to_api=True, save_to_file=False,
                         output_dir=tmp_path)
    assert "save_to_api: ignored: CodeCarbon's online dashboard API is not used" in caplog.text


def test_a_bad_region_fails_when_the_tracker_is_made(rapl):
    from carbonmeter.config import ConfigError

    _, cfg = rapl
    with pytest.raises(ConfigError, match="unknown region 'Atlantis'"):
        track(config=cfg, region="Atlantis")


def test_no_thread_when_only_non_wrapping_counters_are_read(tmp_path, monkeypatch):
    """NVML's total-energy counter (mJ, 64 bits) never wraps: reading it at the start and
    end of the block is exact, so nothing runs in between."""
    gpu = FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-1", power_mw=250_000, energy_counter=True)
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([gpu]))
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {disabled: [rapl, cpu_model, ram_model, platform_model]}\n")
    before = threading.active_count()
    with track(config=cfg) as t:
        assert threading.active_count() == before
        gpu.advance(2.0)  # 2 s at 250 W
    assert threading.active_count() == before
    assert t.result.energy_j == pytest.approx(500.0, abs=1e-3)
    assert t.result.devices[0].kind == "gpu" and not t.result.devices[0].estimated


def test_wrapping_counters_are_read_once_a_minute(rapl):
    """RAPL's 32-bit counter wraps (262 kJ; a DRAM range is 65 kJ): it must be read at least
    once per wrap, so a thread reads it every WRAP_GUARD_S seconds, no more often."""
    _, cfg = rapl
    before = threading.active_count()
    with track(config=cfg) as t:
        assert threading.active_count() == before + 1
        assert t._meter.sampler.interval == WRAP_GUARD_S
    assert threading.active_count() == before


def test_estimates_are_sampled_at_the_fine_interval(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {disabled: [rapl, nvml]}\n")
    with track(config=cfg) as t:
        assert t._meter.sampler.interval == FINE_INTERVAL_S and t._meter.threaded
    with track(config=cfg, interval=0.2) as t:
        assert t._meter.sampler.interval == 0.2
    assert all(d.estimated for d in t.result.devices)


def test_importing_exporter_loads_nothing_heavy():
    code = ("import sys, carbonmeter; heavy = [m for m in ('yaml', 'carbonmeter.measure.api', "
            "'carbonmeter.config', 'importlib.metadata', 'psutil') if m in sys.modules]; "
            "print(heavy); from carbonmeter import track; print(callable(track))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_a_whole_host_meter_is_the_span_total_not_added_to_its_parts():
    """The same host rule as the exporter: an IPMI/Redfish meter is the host; the parts
    inside it are a breakdown; a declared switch beside the host is added."""
    from carbonmeter.usage import DeviceUsage, Usage

    i = Intensity(100.0, "X", "config", "test")
    from carbonmeter.probes.base import Device

    parts = (DeviceUsage(Device("package-0", "cpu", "rapl"), 300.0, 3.0),
             DeviceUsage(Device("bmc", "platform", "ipmi", scope="host"), 500.0, 5.0),
             DeviceUsage(Device("switch-1", "other", "declared", estimated=True,
                                scope="beside"), 40.0, 0.4))
    u = Usage("", 0.0, 10.0, parts, i, 1.0, metered=True)
    assert u.energy_j == 540.0 and u.emissions_g == pytest.approx(5.4)
    assert (u.measured_j, u.estimated_j) == (500.0, 40.0)
    assert Usage("", 0.0, 10.0, parts[:1], i, 1.0).energy_j == 300.0
    assert Usage("", 0.0, 10.0, parts, i, 1.0).energy_j == 840.0  # no meter: every part
