"""`carbonmeter report` on the rows CodeCarbon-shaped trackers write: a run's flushes are
totals so far (counted once), and the energy columns carry the PUE (taken out again)."""

from __future__ import annotations

import pytest

from carbonmeter import EmissionsTracker
from carbonmeter.report.summary import read, summarise
from tests.fixtures.powercap import FAST_FORWARD_UW, one_socket

CODECARBON_HEADER = (
    "timestamp,project_name,run_id,experiment_id,duration,emissions,emissions_rate,cpu_power,"
    "gpu_power,ram_power,cpu_energy,gpu_energy,ram_energy,energy_consumed,water_consumed,"
    "country_name,country_iso_code,region,cloud_provider,cloud_region,os,python_version,"
    "codecarbon_version,cpu_count,cpu_model,gpu_count,gpu_model,longitude,latitude,"
    "ram_total_size,tracking_mode,cpu_utilization_percent,gpu_utilization_percent,"
    "ram_utilization_percent,ram_used_gb,on_cloud,pue,wue")


def codecarbon_row(run: str, seconds: int, kwh: float) -> str:
    """A row as CodeCarbon 3.3.2 writes it, PUE 1.5 applied, France's 56 g/kWh."""
    return (f"2024-03-01T10:00:{seconds:02d},p,{run},e,{seconds},{kwh * 0.056},0,1,0,1,"
            f"{kwh * 0.8},0,{kwh * 0.2},{kwh},0.0,France,FRA,,,,Linux,3.11,3.3.2,8,Intel,0,,,,"
            "16,machine,0,0,0,0,N,1.5,0.0")


def test_codecarbons_flushes_count_once_and_its_pue_is_taken_out(tmp_path):
    path = tmp_path / "emissions.csv"
    path.write_text("\n".join([CODECARBON_HEADER, codecarbon_row("a", 10, 0.015),
                               codecarbon_row("a", 30, 0.03), codecarbon_row("b", 20, 0.003),
                               ""]))
    s = summarise(read(path))
    assert s.runs == 2 and s.duration_s == 50  # a's last total (30 s) and b
    assert s.facility_kwh == pytest.approx(0.033)  # what the grid delivered
    assert s.energy_kwh == pytest.approx(0.033 / 1.5)  # what the devices drew
    assert s.by_kind == {"cpu": pytest.approx(0.8 * 0.022), "ram": pytest.approx(0.2 * 0.022)}
    assert s.emissions_g == pytest.approx(0.033 * 56)


def test_carbonmeters_tracker_rows_with_a_flush_count_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tree = one_socket(tmp_path / "sys", max_power_uw=FAST_FORWARD_UW)  # time fast-forwarded
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "probes: {disabled: [nvml, ram_model, platform_model]}\n")
    tracker = EmissionsTracker(config=cfg, country_iso_code="FRA", pue=1.2)
    tracker.start()
    tree.advance("intel-rapl:0", 3600)
    tracker.flush()
    tree.advance("intel-rapl:0", 3600)
    tracker.stop()
    s = summarise(read(tmp_path / "emissions.csv"))
    assert len(read(tmp_path / "emissions.csv")) == 2
    assert s.energy_kwh == pytest.approx(7200 / 3.6e6, rel=1e-5)
    assert s.facility_kwh == pytest.approx(7200 * 1.2 / 3.6e6, rel=1e-5)
    assert s.by_device["package-0"]["energy_kwh"] == pytest.approx(7200 / 3.6e6, rel=1e-5)
