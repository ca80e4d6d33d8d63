"""Error bars: on estimated devices, never on measured ones, in every place a figure is shown.

An estimated device carries the model's held-out error at idle and at full load and its own
power at idle and full (probes.base.Device.error, .power_range_w); a mean power between them
gives the load, and the error is linear in it. The exposition is checked by promtool; the
emissions log is read back with the csv module and then by `carbonmeter report`.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time

import pytest

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.carbon.regions import find_region
from carbonmeter.probes.base import Device, Reading, relative_error
from carbonmeter.report.html import page
from carbonmeter.report.summary import read, summarise
from carbonmeter.report.text import text
from carbonmeter.sampler import Sampler
from carbonmeter.sinks.emissions_log import (
    COLUMNS,
    OWN_COLUMNS,
    EmissionsLog,
    RowContext,
    rows_for,
)
from carbonmeter.sinks.prometheus import Renderer
from carbonmeter.usage import DeviceUsage, Usage
from tests.fakes.probe import ScriptedProbe
from tests.helpers import require

PKG = Device("package-0", "cpu", "rapl", wrap_uj=1e12)
# 20 W idle to 100 W at full load; ± 30 % at idle, ± 10 % at full
CPU = Device("cpu", "cpu", "cpu_model", estimated=True, mean_power=True, error=(0.3, 0.1),
             power_range_w=(20.0, 100.0))
RAM = Device("ram", "ram", "ram_model", estimated=True, error=(0.3, 0.1),
             power_range_w=(4.0, 4.0))
FR = find_region("FR")


def test_error_follows_the_load_and_measured_devices_have_none() -> None:
    assert relative_error(CPU, 20.0) == pytest.approx(0.3)
    assert relative_error(CPU, 60.0) == pytest.approx(0.2)
    assert relative_error(CPU, 100.0) == pytest.approx(0.1)
    assert relative_error(CPU, 500.0) == pytest.approx(0.1)  # beyond the range: clamped
    assert relative_error(RAM, 4.0) == pytest.approx(0.2)  # power that does not follow load
    assert relative_error(PKG, 50.0) is None


def test_prometheus_exports_the_error_of_estimated_devices_only() -> None:
    probe = ScriptedProbe([PKG, CPU], script=lambda n: [
        Reading(PKG, counter_uj=2_000_000 * n), Reading(CPU, power_w=60.0)])
    s = Sampler([probe], Static(Intensity(56.0, "FR", "bundled", "test")), pue=1.0,
                interval=3600)
    s.sample()
    time.sleep(0.01)
    s.sample()
    body, _ = Renderer(lambda: s.latest).render("", False)
    lines = [line for line in body.decode().splitlines()
             if line.startswith("carbonmeter_estimate_relative_error")]
    assert lines == ['carbonmeter_estimate_relative_error_ratio{device="cpu",kind="cpu",'
                     'source="cpu_model"} 0.2']
    out = subprocess.run([require("promtool"), "check", "metrics"], input=body,
                         capture_output=True)
    assert out.returncode == 0 and out.stdout == b"" and out.stderr == b"", out


def usage(duration: float = 100.0) -> Usage:
    """A measured package (3 kJ) beside an estimated CPU at 60 W and RAM at 4 W."""
    g = FR.g_per_kwh / 3.6e6
    devices = (DeviceUsage(PKG, 3000.0, 3000.0 * g), DeviceUsage(CPU, 6000.0, 6000.0 * g),
               DeviceUsage(RAM, 400.0, 400.0 * g))
    return Usage("", 1_700_000_000.0, duration, devices,
                 Intensity(FR.g_per_kwh, "FR", "bundled", FR.source, FR.year), 1.0)


def test_span_errors_weight_estimated_devices_by_their_energy() -> None:
    u = usage()
    assert u.devices[1].relative_error(u.duration_s) == pytest.approx(0.2)  # 60 W: midway
    # (0.2 x 6000 + 0.2 x 400) / 6400 of the estimated energy; measured energy adds none
    assert u.estimated_relative_error == pytest.approx(0.2)
    assert u.energy_relative_error == pytest.approx(0.2 * 6400 / 9400)


def test_emissions_log_column_report_text_and_html(tmp_path) -> None:
    assert OWN_COLUMNS[-1] == COLUMNS[-1] == "energy_consumed_relative_error"
    path = tmp_path / "log.csv"
    EmissionsLog(path).append(rows_for(usage(), RowContext("p", "run-1")))
    with open(path, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["energy_consumed_relative_error"]) == pytest.approx(0.2 * 6400 / 9400)
    devices = json.loads(row["devices"])
    assert devices["cpu"]["relative_error"] == pytest.approx(0.2)
    assert "relative_error" not in devices["package-0"]

    summary = summarise(read(path))
    assert summary.energy_relative_error == pytest.approx(0.2 * 6400 / 9400)
    report = text(summary, "log.csv")
    assert "± 14 %" in report.splitlines()[4]  # the energy line
    cpu_line = next(line for line in report.splitlines() if "cpu_model" in line)
    pkg_line = next(line for line in report.splitlines() if "package-0" in line)
    assert cpu_line.rstrip().endswith("± 20 %") and "±" not in pkg_line
    html = page(summary, "log.csv")
    assert "<td>cpu</td><td>cpu</td><td>cpu_model</td><td>estimated</td>" in html
    assert "<td>± 20 %</td>" in html


def test_a_codecarbon_log_has_no_error_bar(tmp_path) -> None:
    path = tmp_path / "emissions.csv"
    path.write_text("timestamp,duration,emissions,energy_consumed\n"
                    "2024-05-01T12:00:00,60,0.001,0.002\n")
    summary = summarise(read(path))
    assert summary.energy_relative_error is None
    assert "±" not in text(summary, "emissions.csv")
