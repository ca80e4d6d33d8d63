"""`carbonmeter report` over logs a single intensity cannot describe, and logs that do not say
what was measured.

The first is the case of one run in France and one in Poland in the same log: 191.6 J at
France's 56.0 g/kWh (2.98 mg) and 193.1 J at Poland's 661.9 (35.5 mg), PUE 1. The report must
be the sum of its rows (38.5 mg), show each grid with its share of the energy and the mean
intensity (38.48 mg over 384.7 J, 0.00010686 kWh: 360 g/kWh), and compare other grids on the
energy: all 384.7 J in Bhutan (23.3) is 2.49 mg.

The second is CodeCarbon's own emissions.csv: no `devices` column, so nothing in it says what
was measured; the HTML page, opened in a real headless Chromium, must draw no bar in the
colour that means "measured".
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import find_region
from carbonmeter.probes.base import Device
from carbonmeter.report.html import MEASURED
from carbonmeter.report.summary import read, summarise
from carbonmeter.sinks.emissions_log import EmissionsLog, RowContext, rows_for
from carbonmeter.usage import DeviceUsage, Usage
from tests.helpers import chromium

FR, PL = find_region("FR"), find_region("PL")
PKG = Device("package-0", "cpu", "rapl")
KWH = 3.6e6


def run_in(region, joules: float, started: float) -> Usage:
    i = Intensity(region.g_per_kwh, region.code, "bundled", region.source, region.year)
    return Usage("", started, 10.0, (DeviceUsage(PKG, joules, joules / KWH * region.g_per_kwh),),
                 i, 1.0)


@pytest.fixture
def two_regions(tmp_path):
    path = tmp_path / "log.csv"
    log = EmissionsLog(path)
    log.append(rows_for(run_in(FR, 191.6, 1_700_000_000), RowContext("p", "fr-run")))
    log.append(rows_for(run_in(PL, 193.1, 1_700_000_100), RowContext("p", "pl-run")))
    return path


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbonmeter", "report", *args],
                          capture_output=True, text=True, timeout=120)


def test_two_regions_are_the_sum_of_their_rows(two_regions):
    with open(two_regions, newline="") as f:
        rows = list(csv.DictReader(f))
    s = summarise(read(two_regions))
    assert s.emissions_g == pytest.approx(sum(float(r["emissions"]) for r in rows) * 1000)
    fr_g, pl_g = 191.6 / KWH * 56.0, 193.1 / KWH * 661.9  # 2.980 mg, 35.503 mg
    assert s.emissions_g == pytest.approx(fr_g + pl_g)  # 38.48 mg
    assert s.g_per_kwh == pytest.approx((fr_g + pl_g) / (384.7 / KWH))  # 360.1 g/kWh
    assert 359 < s.g_per_kwh < 361
    assert [(g.intensity.region, g.intensity.g_per_kwh) for g in s.grids] == [
        ("PL", 661.9), ("FR", 56.0)]  # largest share first
    assert [g.share for g in s.grids] == [pytest.approx(193.1 / 384.7),
                                          pytest.approx(191.6 / 384.7)]
    assert [g.emissions_g for g in s.grids] == [pytest.approx(pl_g), pytest.approx(fr_g)]
    places = [(e.role, e.region.code, e.grams) for e in s.places]
    kwh = 384.7 / KWH
    assert places[0] == ("as run", "mixed", pytest.approx(fr_g + pl_g))
    # all of the energy on each grid in use, then the landmarks: never one row's intensity
    # beside the whole log's grams
    assert places[1:3] == [("in use", "PL", pytest.approx(kwh * 661.9)),
                           ("in use", "FR", pytest.approx(kwh * 56.0))]
    assert places[3] == ("greenest", "BT", pytest.approx(kwh * 23.3))  # 2.490 mg
    assert [p[0] for p in places[4:]] == ["median", "dirtiest"]
    greenest = s.places[3]
    assert greenest.saving_g == pytest.approx(fr_g + pl_g - kwh * 23.3)


def test_two_regions_in_the_text_report(two_regions):
    out = report(str(two_regions))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "CO2eq         38.5 mg" in text
    assert "intensity     360 gCO2eq/kWh on average" in text and "on 2 grids:" in text
    assert "PL          662 gCO2eq/kWh   50.2 % of the energy    35.5 mg" in text
    assert "FR         56.0 gCO2eq/kWh   49.8 % of the energy    2.98 mg" in text
    assert "as run     mixed  as run (PL 50.2 %, FR 49.8 %)   360.1 g/kWh    38.5 mg" in text
    # all 384.7 J in France: 5.98 mg, 32.5 mg less than as run; in Poland 70.7 mg
    assert "in use     FR     France                            56 g/kWh    5.98 mg  saves " \
        "32.5 mg" in text
    assert "in use     PL     Poland                         661.9 g/kWh    70.7 mg  adds " \
        "32.2 mg" in text
    assert "greenest   BT     Bhutan" in text and "saves 36.0 mg" in text  # 38.48 - 2.49 mg
    assert "configured" not in text
    assert "measured      100 % measured" in text


def test_a_codecarbon_log_says_every_figure_is_an_estimate(tmp_path):
    path = codecarbon_log(tmp_path)
    out = report(str(path))
    assert out.returncode == 0, out.stderr
    assert "measured      0 % measured: the log does not say which devices were measured" \
        in out.stdout
    assert "every figure is counted as an estimate" in out.stdout


def codecarbon_log(tmp_path):
    """Two rows as CodeCarbon 3.3 writes them (its column set; no devices column)."""
    path = tmp_path / "emissions.csv"
    cols = ("timestamp,project_name,run_id,experiment_id,duration,emissions,emissions_rate,"
            "cpu_power,gpu_power,ram_power,cpu_energy,gpu_energy,ram_energy,energy_consumed,"
            "country_name,country_iso_code,region,cloud_provider,cloud_region,os,"
            "python_version,codecarbon_version,cpu_count,cpu_model,gpu_count,gpu_model,"
            "longitude,latitude,ram_total_size,tracking_mode,on_cloud,pue")
    rows = [f"2024-03-01T1{n}:00:00,p,{n},e,3600,0.0028,7.8e-07,42.5,0,3,0.0425,0,0.0075,0.05,"
            "France,FRA,,,,Linux,3.11,3.3.2,8,Intel,0,,2.3,48.8,16,machine,N,1.0"
            for n in range(2)]
    path.write_text(cols + "\n" + "\n".join(rows) + "\n")
    return path


# Every shape on a page filled in the measured colour, as Chromium computes it.
MEASURED_RGB = "rgb({}, {}, {})".format(*(int(MEASURED[i:i + 2], 16) for i in (1, 3, 5)))
FILLED = f"""JSON.stringify([...document.querySelectorAll('svg.chart')].map(s => ({{
  label: s.getAttribute('aria-label'),
  measured: [...s.querySelectorAll('path')].filter(
    p => getComputedStyle(p).fill === '{MEASURED_RGB}').length}})))"""


def test_html_of_an_all_estimated_log_draws_nothing_as_measured(tmp_path, two_regions):
    estimated, measured = tmp_path / "estimated.html", tmp_path / "measured.html"
    for log, page in ((codecarbon_log(tmp_path), estimated), (two_regions, measured)):
        out = report(str(log), "--html", str(page))
        assert out.returncode == 0, out.stderr
    assert "0 % measured" in estimated.read_text()
    with chromium(tmp_path) as browser:
        got = {}
        for page in (estimated, measured):
            session = browser.open(page.as_uri())
            result = browser.send("Runtime.evaluate", {"expression": FILLED,
                                                       "returnByValue": True}, session=session)
            got[page.stem] = {c["label"]: c["measured"]
                              for c in json.loads(result["result"]["value"])}
    assert got["estimated"] == {"power over time per device": 0, "energy by device": 0,
                                "emissions by region": 0}
    # the same check finds the measured bar of a measured log (so it can fail), and only there
    assert got["measured"]["energy by device"] == 1
    assert got["measured"]["emissions by region"] == 0
