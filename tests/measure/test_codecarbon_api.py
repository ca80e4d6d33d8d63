"""CodeCarbon's interface on carbonmeter's measurements: what each keyword does here.

Energy comes from the powercap fixture (the kernel's RAPL counter files, advanced by the test
while the tracker runs), so every figure is known exactly; CodeCarbon's own behaviour is
checked against CodeCarbon itself in test_codecarbon_differential.py.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbonmeter import EmissionsTracker, LoggerOutput, OfflineEmissionsTracker, OutputMethod
from carbonmeter.carbon.regions import find_cloud, find_region
from carbonmeter.config import ConfigError
from carbonmeter.measure import codecarbon_config
from carbonmeter.sinks.emissions_log import CODECARBON_COLUMNS
from tests.fixtures.powercap import FAST_FORWARD_UW, one_socket, two_sockets_with_dram
from tests.helpers import pushgateway

PKG = "intel-rapl:0"


@pytest.fixture
def rapl(tmp_path, monkeypatch):
    """One package read through RAPL, nothing estimated; no CodeCarbon configuration."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in list(os.environ):
        if k.upper().startswith("CODECARBON_"):
            monkeypatch.delenv(k)
    tree = one_socket(tmp_path / "sys", max_power_uw=FAST_FORWARD_UW)  # time fast-forwarded
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "probes: {disabled: [nvml, ram_model, platform_model]}\n")
    return tree, cfg


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def kwh(joules: float) -> float:
    return joules / 3.6e6


# -- tasks, as CodeCarbon has them ------------------------------------------------------------


def test_a_task_starts_the_tracker_and_a_name_may_repeat(rapl, caplog):
    tree, cfg = rapl
    tracker = EmissionsTracker(config=cfg, country_iso_code="FRA")
    with caplog.at_level(logging.WARNING, logger="carbonmeter"):
        tracker.start_task("step")  # before start(), as CodeCarbon allows
        tracker.start()  # already running: a warning, nothing else
        tracker.start_task("other")  # one task at a time: a warning, ignored
        tree.advance(PKG, 36)
        first = tracker.stop_task()
        assert tracker.stop_task() is None  # nothing runs
        tracker.start_task("step")
        tree.advance(PKG, 72)
        tracker.start_task("step")  # ignored: "step" runs
        tree.advance(PKG, 18)
    kg = tracker.stop()  # ends the task still running
    assert "Already started tracking" in caplog.text
    assert "A task is already under measure" in caplog.text
    assert first.energy_consumed == pytest.approx(kwh(36), rel=1e-6)
    tasks = rows(Path(f"emissions_base_{tracker.run_id}.csv"))
    assert tasks[0]["task_name"] == "step" and tasks[1]["task_name"].startswith("step_")
    assert float(tasks[1]["energy_consumed"]) == pytest.approx(kwh(90), rel=1e-6)
    (run,) = rows(Path("emissions.csv"))
    assert float(run["energy_consumed"]) == pytest.approx(kwh(126), rel=1e-6)
    assert float(run["emissions"]) == pytest.approx(kg, rel=1e-9)
    assert [t.name for t in tracker.result.tasks] == ["step", tasks[1]["task_name"]]


def test_stop_and_flush_without_start_and_stop_twice(rapl, caplog):
    _, cfg = rapl
    tracker = OfflineEmissionsTracker(config=cfg, country_iso_code="FRA")
    with caplog.at_level(logging.WARNING, logger="carbonmeter"):
        assert tracker.stop() is None and tracker.flush() is None
        assert tracker.stop_task() is None
    assert "never started" in caplog.text and "first need to start" in caplog.text
    tracker.start()
    kg = tracker.stop()
    assert tracker.stop() == kg  # CodeCarbon returns the last result
    assert not Path("emissions_base_" + str(tracker.run_id) + ".csv").exists()


def test_service_shutdown_is_a_signal_handler_that_stops(rapl):
    tree, cfg = rapl
    tracker = EmissionsTracker(config=cfg)
    previous = signal.signal(signal.SIGUSR1, tracker.service_shutdown)
    try:
        tracker.start()
        tree.advance(PKG, 360)
        signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert not tracker.running
    assert tracker.final_emissions_data.energy_consumed == pytest.approx(kwh(360), rel=1e-5)


def test_get_detected_hardware(rapl):
    _, cfg = rapl
    hw = EmissionsTracker(config=cfg, gpu_ids="0,1").get_detected_hardware()
    assert set(hw) == {"ram_total_size", "cpu_count", "cpu_physical_count", "cpu_model",
                       "gpu_count", "gpu_model", "gpu_ids"}
    assert hw["gpu_count"] == 0 and hw["gpu_ids"] == ["0", "1"] and hw["cpu_count"] >= 1
    from carbonmeter.probes.cpu_model import read_cpuinfo

    assert hw["cpu_model"] == read_cpuinfo(Path("/proc"))[0]  # the RAPL package's model


# -- where, and at which intensity -----------------------------------------------------------


def test_a_cloud_region_is_priced_from_the_bundled_table(rapl):
    """The issue's case: gcp europe-west9 was priced at the world's 475 g/kWh."""
    tree, cfg = rapl
    with EmissionsTracker(config=cfg, cloud_provider="gcp",
                          cloud_region="europe-west9") as tracker:
        tree.advance(PKG, 3600)
    g = find_cloud("gcp", "europe-west9").g_per_kwh
    assert g == 34.0
    assert tracker.final_emissions == pytest.approx(kwh(3600) * g / 1000, rel=1e-6)
    (r,) = rows(Path("emissions.csv"))
    assert (r["cloud_provider"], r["cloud_region"], r["on_cloud"]) == ("gcp", "europe-west9",
                                                                       "Y")
    assert (r["country_name"], r["country_iso_code"], r["region"]) == ("France", "FRA", "Paris")


def test_a_state_and_a_forced_intensity(rapl):
    tree, cfg = rapl
    with OfflineEmissionsTracker(config=cfg, country_iso_code="USA", region="California",
                                 output_file="state.csv") as tracker:
        tree.advance(PKG, 3600)
    assert tracker.final_emissions == pytest.approx(
        kwh(3600) * find_region("US-CA").g_per_kwh / 1000, rel=1e-6)
    (r,) = rows(Path("state.csv"))
    assert (r["country_iso_code"], r["region"]) == ("USA", "california")
    with OfflineEmissionsTracker(config=cfg, country_iso_code="FRA", output_file="forced.csv",
                                 force_carbon_intensity_g_co2e_kwh=123) as tracker:
        tree.advance(PKG, 3600)
    assert tracker.final_emissions == pytest.approx(kwh(3600) * 0.123, rel=1e-6)
    (r,) = rows(Path("forced.csv"))
    assert r["country_name"] == "France" and float(r["carbon_intensity"]) == 123.0


def test_pue_and_wue_as_codecarbon_applies_them(rapl):
    """PUE multiplies the energy and power columns and the emissions; water = energy x WUE."""
    tree, cfg = rapl
    with OfflineEmissionsTracker(config=cfg, country_iso_code="FRA", pue=1.5,
                                 wue=1.8) as tracker:
        tree.advance(PKG, 7200)
    d = tracker.final_emissions_data
    assert d.energy_consumed == d.cpu_energy == pytest.approx(kwh(7200) * 1.5, rel=1e-6)
    assert d.water_consumed == pytest.approx(d.energy_consumed * 1.8, rel=1e-12)
    assert d.emissions == pytest.approx(kwh(7200) * 1.5 * find_region("FR").g_per_kwh / 1000,
                                        rel=1e-6)
    assert (d.pue, d.wue) == (1.5, 1.8) and d.usage.energy_j == pytest.approx(7200, abs=1e-3)


def test_rapl_include_dram_reports_dram_with_the_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = two_sockets_with_dram(tmp_path / "sys")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\nprobes: {{disabled: [nvml]}}\n")
    for include in (False, True):
        with EmissionsTracker(config=cfg, rapl_include_dram=include,
                              save_to_file=False) as tracker:
            tree.advance("intel-rapl:0", 100)
            tree.advance("intel-rapl:0:0", 10)  # its DRAM subzone
        d = tracker.final_emissions_data
        cpu, ram = (110, 0) if include else (100, 10)
        assert (d.cpu_energy, d.ram_energy) == (pytest.approx(kwh(cpu), rel=1e-5),
                                                pytest.approx(kwh(ram), rel=1e-5, abs=1e-12))


# -- forced and default power -----------------------------------------------------------------


def test_forced_cpu_and_ram_power_replace_the_estimates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = EmissionsTracker(force_cpu_power=50, force_ram_power=7, save_to_file=False)
    assert tracker.cfg.section("cpu").tdp_watts == 50
    from carbonmeter.probes.ram_model import installed_gb

    gb = installed_gb(Path("/proc/meminfo").read_text())
    assert tracker.cfg.section("ram").watts_per_gb * gb == pytest.approx(7)


def test_a_measured_cpu_wins_over_a_forced_power_and_says_so(rapl, caplog):
    tree, cfg = rapl
    with caplog.at_level(logging.WARNING, logger="carbonmeter"), \
            EmissionsTracker(config=cfg, force_cpu_power=500, save_to_file=False) as tracker:
        tree.advance(PKG, 36)
    assert "force_cpu_power: the CPU is measured by rapl" in caplog.text
    assert tracker.final_emissions_data.cpu_energy == pytest.approx(kwh(36), rel=1e-6)


def test_default_cpu_power_is_used_only_for_a_cpu_not_in_the_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    known, unknown = tmp_path / "known", tmp_path / "unknown"
    for d, model in ((known, "Intel(R) Xeon(R) Gold 6226R CPU @ 2.90GHz"),
                     (unknown, "Imaginary CPU 9000")):
        d.mkdir()
        (d / "cpuinfo").write_text(f"processor\t: 0\nmodel name\t: {model}\nphysical id\t: 0\n")
        (d / "c.yaml").write_text(f"paths: {{procfs: {d}}}\n")
    assert EmissionsTracker(config=known / "c.yaml", default_cpu_power=33,
                            save_to_file=False).cfg.section("cpu").tdp_watts is None
    assert EmissionsTracker(config=unknown / "c.yaml", default_cpu_power=33,
                            save_to_file=False).cfg.section("cpu").tdp_watts == 33


def test_gpu_ids_from_the_keyword_or_cuda_visible_devices(rapl, monkeypatch):
    _, cfg = rapl
    assert EmissionsTracker(config=cfg, gpu_ids=[0, "GPU-8a1b"]).cfg.section("gpu").devices == \
        ["0", "GPU-8a1b"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    assert EmissionsTracker(config=cfg).cfg.section("gpu").devices == ["1", "2"]


# -- outputs ----------------------------------------------------------------------------------


def test_output_methods_by_enum_string_and_list(rapl):
    _, cfg = rapl
    assert EmissionsTracker(config=cfg, output_methods=[OutputMethod.LOGGER])._methods \
        == {"logger"}
    assert EmissionsTracker(config=cfg, output_methods="csv, prometheus")._methods == \
        {"csv", "prometheus"}
    assert EmissionsTracker(config=cfg, output_methods=[])._methods == set()
    assert EmissionsTracker(config=cfg, save_to_file=False, save_to_logger=True)._methods \
        == {"logger"}
    with pytest.raises(ValueError, match="'carrier-pigeon' is not one of csv"):
        EmissionsTracker(config=cfg, output_methods=["carrier-pigeon"])


def test_a_logger_gets_codecarbons_record_at_each_flush_and_stop(rapl):
    tree, cfg = rapl
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    plain = logging.getLogger("test-emissions-plain")
    plain.addHandler(Keep())
    plain.setLevel(logging.INFO)
    tracker = EmissionsTracker(config=cfg, save_to_logger=True, save_to_file=False,
                               logging_logger=LoggerOutput(plain, logging.WARNING))
    tracker.start()
    tree.advance(PKG, 36)
    tracker.flush()
    tracker.stop()
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    last = json.loads(records[-1].getMessage())
    assert list(last) == list(CODECARBON_COLUMNS)
    assert last["energy_consumed"] == pytest.approx(kwh(36), rel=1e-6)
    bare = EmissionsTracker(config=cfg, output_methods=["logger"], logging_logger=plain)
    bare.start()
    bare.stop()
    assert len(records) == 3 and records[-1].levelno == logging.INFO  # a bare Logger: INFO


def test_output_handlers_get_out_task_out_and_exit(rapl):
    tree, cfg = rapl
    calls: list[tuple[str, object]] = []

    class Handler:
        def out(self, total, delta):
            calls.append(("out", (total.energy_consumed, delta.energy_consumed)))

        def task_out(self, data, experiment_name):
            calls.append(("task_out", ([t.task_name for t in data], experiment_name)))

        def exit(self):
            calls.append(("exit", None))

    tracker = EmissionsTracker(config=cfg, output_handlers=[Handler()], save_to_file=False,
                               experiment_name="exp")
    tracker.start()
    tree.advance(PKG, 36)
    tracker.flush()
    tracker.start_task("t")
    tree.advance(PKG, 36)
    tracker.stop()
    assert [c[0] for c in calls] == ["out", "out", "task_out", "exit"]
    assert calls[0][1] == (pytest.approx(kwh(36)), pytest.approx(kwh(36)))
    assert calls[1][1] == (pytest.approx(kwh(72)), pytest.approx(kwh(36)))  # total, delta
    assert calls[2][1] == (["t"], "exp")


def test_save_to_prometheus_pushes_to_a_real_pushgateway(rapl, tmp_path):
    tree, cfg = rapl
    with pushgateway(tmp_path) as url:
        tracker = EmissionsTracker(config=cfg, save_to_prometheus=True, save_to_file=False,
                                   prometheus_url=url.removeprefix("http://"),
                                   project_name="my project", experiment_name="e1")
        tracker.start()
        tree.advance(PKG, 1500)
        tracker.stop()
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
    (sample,) = next(f for f in text_string_to_metric_families(text)
                     if f.name == "carbonmeter_energy_joules").samples
    assert sample.value == pytest.approx(1500, abs=1e-3)
    assert sample.labels["job"] == "my_project_e1"  # CodeCarbon's job name


def test_on_csv_write_update_keeps_one_row_per_run(rapl):
    tree, cfg = rapl
    tracker = EmissionsTracker(config=cfg, on_csv_write="update")
    tracker.start()
    for _ in range(2):
        tree.advance(PKG, 36)
        tracker.flush()
    tracker.stop()
    (r,) = rows(Path("emissions.csv"))
    assert float(r["energy_consumed"]) == pytest.approx(kwh(72), rel=1e-6)


def test_bad_values_fail_where_codecarbon_fails(rapl):
    _, cfg = rapl
    with pytest.raises(ValueError, match="tracking_mode: 'container'"):
        EmissionsTracker(config=cfg, tracking_mode="container")
    with pytest.raises(ValueError, match="on_csv_write: 'overwrite'"):
        EmissionsTracker(config=cfg, on_csv_write="overwrite")
    with pytest.raises(OSError, match="Folder 'nowhere' doesn't exist"):
        EmissionsTracker(config=cfg, output_dir="nowhere")
    with pytest.raises(ConfigError, match=r"cloud_region='mars-north1': .*unknown gcp region"):
        EmissionsTracker(config=cfg, cloud_provider="gcp", cloud_region="mars-north1")
    with pytest.raises(ConfigError, match=r"country_iso_code='XYZ': .*unknown region 'XYZ'"):
        OfflineEmissionsTracker(config=cfg, country_iso_code="XYZ")


def test_allow_multiple_runs_false_lets_one_tracker_measure(rapl, caplog):
    _, cfg = rapl
    first = EmissionsTracker(config=cfg, allow_multiple_runs=False, save_to_file=False)
    with caplog.at_level(logging.ERROR, logger="carbonmeter"):
        second = EmissionsTracker(config=cfg, allow_multiple_runs=False, save_to_file=False)
    assert "another tracker is running" in caplog.text
    first.start()
    second.start()
    assert first.running and not second.running and second.stop() is None
    first.stop()
    third = EmissionsTracker(config=cfg, allow_multiple_runs=False, save_to_file=False)
    third.start()
    assert third.stop() is not None  # the lock went with the first tracker


def test_process_mode_reports_this_process_trees_share(tmp_path, monkeypatch):
    """tracking_mode="process": the rows hold this process tree's share of the machine's
    energy (CPU time of the tree over the machine's busy time), less than the whole."""
    monkeypatch.chdir(tmp_path)
    with EmissionsTracker(tracking_mode="process", save_to_file=False,
                          measure_power_secs=0.2) as tracker:
        subprocess.run([sys.executable, "-c", "sum(i * i for i in range(3_000_000))"],
                       check=True)
    d = tracker.final_emissions_data
    assert d.tracking_mode == "process" and tracker.result.scope == "process tree"
    whole = tracker.result.energy_kwh * tracker.result.pue
    assert 0 < d.energy_consumed < whole
    assert d.emissions < tracker.result.emissions_kg


# -- CodeCarbon's configuration ---------------------------------------------------------------


def test_configuration_layers_and_types(tmp_path, caplog):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    (home / ".codecarbon.config").write_text("[codecarbon]\nproject_name = h\npue = 1.3\n"
                                             "save_to_file = False\nlog_level = info\n")
    (cwd / ".codecarbon.config").write_text("[codecarbon]\nproject_name = c\n")
    got = codecarbon_config.read({"CODECARBON_LOG_LEVEL": "debug", "codecarbon_pue": "x"},
                                 home, cwd)
    assert got["project_name"] == ("c", str(cwd / ".codecarbon.config"))
    assert got["log_level"] == ("debug", "CODECARBON_LOG_LEVEL")
    assert codecarbon_config.parse("save_to_file", "False", bool, "f") is False
    assert codecarbon_config.parse("save_to_file", "TRUE", bool, "f") is True
    with caplog.at_level(logging.ERROR):
        assert codecarbon_config.parse("pue", "x", float, "codecarbon_pue") is None
    assert "codecarbon_pue: pue='x' is not a float; ignored" in caplog.text
    (cwd / ".codecarbon.config").write_text("project_name = no section\n")
    with pytest.raises(ConfigError, match=r"\.codecarbon\.config: not a CodeCarbon "
                                          r"configuration \(an INI file"):
        codecarbon_config.read({}, home, cwd)


def test_a_keyword_wins_over_the_configuration(rapl, monkeypatch):
    _, cfg = rapl
    Path(".codecarbon.config").write_text("[codecarbon]\nproject_name = from-file\n"
                                          "output_file = file.csv\n")
    monkeypatch.setenv("CODECARBON_PROJECT_NAME", "from-env")
    with EmissionsTracker(config=cfg):
        pass
    with EmissionsTracker(config=cfg, project_name="from-call"):
        pass
    assert [r["project_name"] for r in rows(Path("file.csv"))] == ["from-env", "from-call"]
