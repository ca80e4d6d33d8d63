"""`carbonmeter report`: totals, regions and equivalents from a log; the HTML page in Chromium.

The end-to-end test runs `carbonmeter serve` on the powercap fixture with the emissions log
on, lets it write a row per interval, reports on that log, and opens the page in a real
headless Chromium (started by the test) to check it draws its charts offline.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import find_region
from carbonmeter.probes.base import Device
from carbonmeter.report.summary import read, summarise
from carbonmeter.sinks.emissions_log import EmissionsLog, RowContext, rows_for
from carbonmeter.usage import DeviceUsage, Usage
from tests.fixtures.powercap import two_sockets_with_dram
from tests.helpers import chromium, free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
FR = find_region("FR")


def fr_usage(joules: dict[str, float], duration: float, started: float, *, name: str = "",
             tasks: tuple[Usage, ...] = ()) -> Usage:
    g = FR.g_per_kwh * 1.5 / 3.6e6  # PUE 1.5
    kinds = {"package-0": ("cpu", "rapl", False), "dram-0": ("dram", "rapl", False),
             "ram": ("ram", "ram_model", True)}
    devices = tuple(DeviceUsage(Device(d, *kinds[d][:2], "", kinds[d][2]), j, j * g)
                    for d, j in joules.items())
    return Usage(name, started, duration, devices,
                 Intensity(FR.g_per_kwh, "FR", "bundled", FR.source, FR.year), 1.5, tasks)


@pytest.fixture
def log(tmp_path) -> Path:
    """Two runs in France at PUE 1.5: 7200 + 3600 J of CPU, 360 J of DRAM, 36 J of RAM."""
    path = tmp_path / "log.csv"
    task = fr_usage({"package-0": 1800.0}, 30, 1_700_000_010, name="train")
    run1 = fr_usage({"package-0": 7200.0, "dram-0": 360.0}, 60, 1_700_000_000, tasks=(task,))
    run2 = fr_usage({"package-0": 3600.0, "ram": 36.0}, 40, 1_700_000_100)
    log_ = EmissionsLog(path)
    log_.append(rows_for(run1, RowContext("p", "run-1")))
    log_.append(rows_for(run2, RowContext("p", "run-2")))
    return path


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbonmeter", "report", *args],
                          capture_output=True, text=True, timeout=120)


def test_totals_kinds_regions_and_equivalents_by_hand(log):
    s = summarise(read(log))
    # runs only (the task row lies inside run-1): 7200 + 360 + 3600 + 36 = 11196 J
    assert s.energy_kwh == pytest.approx(11196 / 3.6e6)
    assert s.facility_kwh == pytest.approx(11196 * 1.5 / 3.6e6)  # 0.004665 kWh
    assert s.emissions_g == pytest.approx(0.004665 * 56.0)  # 0.26124 g
    assert s.runs == 2 and len(s.tasks) == 1 and s.duration_s == 100
    assert s.by_kind == {"cpu": pytest.approx(10800 / 3.6e6), "ram": pytest.approx(396 / 3.6e6)}
    assert s.by_device["ram"]["estimated"] and not s.by_device["package-0"]["estimated"]
    [grid] = s.grids
    assert (grid.intensity.region, grid.intensity.provider, grid.share) == ("FR", "bundled", 1.0)
    # measured: both packages and the DRAM zone; estimated: the 36 J of the RAM model
    assert s.measured_kwh == pytest.approx(11160 / 3.6e6)
    roles = {e.role: e for e in s.places}
    assert roles["configured"].grams == pytest.approx(0.26124)
    # Bhutan: the Central African Republic's 0 g/kWh is too coarse to rank (test_greenest)
    assert roles["greenest"].region.code == "BT" and roles["greenest"].saving_g == \
        pytest.approx(0.26124 - 0.004665 * 23.3)
    assert roles["median"].grams == pytest.approx(0.004665 * 475.4)  # Vietnam: 2.2177 g
    assert roles["dirtiest"].grams == pytest.approx(0.004665 * 1306.0)  # 6.09249 g
    assert roles["dirtiest"].saving_g == pytest.approx(0.26124 - 6.09249)
    eq = {f.what: n for f, n in s.equivalents}
    assert eq["km driven by an average new car in Europe"] == pytest.approx(0.26124 / 108.1)
    assert eq["full smartphone charges"] == pytest.approx(0.004665 / 0.0116)  # 0.402


def test_text_report(log):
    out = report(str(log))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "2 in 2 run(s), 1 task row(s)" in text
    assert "3.11 Wh (with PUE: 4.67 Wh)" in text  # 11196 J, 16794 J
    assert "CO2eq         261 mg" in text
    assert "configured FR     France" in text and "dirtiest   TM     Turkmenistan" in text
    assert "adds 5.83 g" in text  # 6.09249 - 0.26124
    assert "2.42 m driven by an average new car in Europe" in text  # 0.26124 / 108.1 km
    assert "0.402 full smartphone charges" in text
    assert "European Environment Agency" in text and "US EPA" in text
    assert "train" in text and "whole machine" in text


def test_reads_codecarbon_emissions_csv(tmp_path):
    """A CodeCarbon user's own emissions.csv: its columns only, local time without offset."""
    path = tmp_path / "emissions.csv"
    cols = ("timestamp,project_name,run_id,experiment_id,duration,emissions,emissions_rate,"
            "cpu_power,gpu_power,ram_power,cpu_energy,gpu_energy,ram_energy,energy_consumed,"
            "country_name,country_iso_code,region,cloud_provider,cloud_region,os,"
            "python_version,codecarbon_version,cpu_count,cpu_model,gpu_count,gpu_model,"
            "longitude,latitude,ram_total_size,tracking_mode,on_cloud,pue")
    # 0.05 kWh each at France's 56 g/kWh: 2.8 g = 0.0028 kg
    rows = ["2024-03-01T10:00:00,p,a,e,3600,0.0028,7.8e-07,42.5,0,3,0.0425,0,0.0075,0.05,"
            "France,FRA,,,,Linux,3.11,2.3.4,8,Intel,0,,2.3,48.8,16,machine,N,1.0",
            "2024-03-01T11:00:00,p,b,e,3600,0.0028,7.8e-07,42.5,0,3,0.0425,0,0.0075,0.05,"
            "France,FRA,,,,Linux,3.11,2.3.4,8,Intel,0,,2.3,48.8,16,machine,N,1.0"]
    path.write_text(cols + "\n" + "\n".join(rows) + "\n")
    s = summarise(read(path))
    assert s.energy_kwh == pytest.approx(0.1) and s.emissions_g == pytest.approx(5.6)
    assert s.by_kind == {"cpu": pytest.approx(0.085), "ram": pytest.approx(0.015)}
    # the intensity its figures imply (2.8 g / 0.05 kWh) is France's row of the table
    assert [(g.intensity.region, g.intensity.provider) for g in s.grids] == [("FR", "bundled")]
    # its log does not say which devices were measured: nothing is counted as measured
    assert not s.devices_known and s.measured_kwh == 0
    assert s.runs == 2 and s.duration_s == 7200
    assert {e.role: e.region.code for e in s.places}["dirtiest"] == "TM"


def test_json_lines_and_torn_rows(tmp_path):
    path = tmp_path / "log.jsonl"
    log_ = EmissionsLog(path, "jsonl")
    log_.append(rows_for(fr_usage({"package-0": 3600.0}, 10, 1_700_000_000), RowContext("p", "r")))
    with open(path, "a") as f:
        f.write('{"timestamp": "2024-')  # a writer killed mid-row
    s = summarise(read(path))
    assert s.energy_kwh == pytest.approx(0.001)


@pytest.mark.parametrize(("content", "message"), [
    ("", "empty"),
    ("a,b,c\n1,2,3\n", "no column timestamp, duration, emissions, energy_consumed"),
    ("timestamp,duration,emissions,energy_consumed\nyesterday,1,1,1\n", "not ISO 8601"),
    ("timestamp,duration,emissions,energy_consumed\n", "no rows to report on"),
])
def test_not_a_log_says_why_and_exits_2(tmp_path, content, message):
    path = tmp_path / "x.csv"
    path.write_text(content)
    out = report(str(path))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    out = report(str(tmp_path / "missing.csv"))
    assert out.returncode == 2 and "cannot read" in out.stderr


def test_serve_writes_a_row_per_interval_and_the_html_report_renders_in_chromium(tmp_path):
    tree = two_sockets_with_dram(tmp_path / "sys")
    log_path = tmp_path / "serve.csv"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "probes: {disabled: [nvml, platform_model]}\n"
                   f"carbon: {{region: FR}}\nemissions_log: {{path: {log_path}}}\n")
    port = free_port()
    with open(tmp_path / "serve.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "carbonmeter", "serve", "--config", str(cfg),
                                 "--listen", f"127.0.0.1:{port}", "--interval", "0.2"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: log_path.exists() and len(log_path.read_text().splitlines()) >= 2,
                 timeout=30, what="the first row")
        added = 0.0
        for step in range(8):
            tree.advance("intel-rapl:0", 30.0 + 10 * step)
            tree.advance("intel-rapl:1:0", 2.0)
            added += 32.0 + 10 * step
            time.sleep(0.15)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, (tmp_path / "serve.log").read_text()
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 5
    # rows are consecutive intervals: together they hold every joule the fixture counted
    assert sum(float(r["energy_consumed"]) for r in rows) * 3.6e6 == pytest.approx(added,
                                                                                 abs=1e-3)
    assert all(0.1 < float(r["duration"]) < 1.0 for r in rows[:-1]), [r["duration"] for r in rows]
    assert {r["run_id"] for r in rows} == {rows[0]["run_id"]}

    page = tmp_path / "report.html"
    out = report(str(log_path), "--html", str(page))
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    # nothing to fetch: no script, stylesheet or image, no URL but the SVG namespaces
    bare = re.sub(r'xmlns(:\w+)?="http://www\.w3\.org/[^"]*"', "", html)
    for banned in ("<script", "<link", "<img", "<iframe", "http:", "https:", "@import"):
        assert banned not in bare, banned

    url = page.as_uri()
    with chromium(tmp_path) as browser:
        session = browser.open(url)
        drawn = browser.send("Runtime.evaluate", {"returnByValue": True, "expression": """
            JSON.stringify([...document.querySelectorAll('svg.chart')].map(s => {
              const r = s.getBoundingClientRect();
              return {label: s.getAttribute('aria-label'), width: r.width, height: r.height,
                      paths: s.querySelectorAll('path').length,
                      lines: s.querySelectorAll('g[id*="line2d"] path').length,
                      bars: s.querySelectorAll('g[id*="patch"]').length};
            }))"""}, session=session)
        shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
        events = list(browser.events)
    charts = json.loads(drawn["result"]["value"])
    assert [c["label"] for c in charts] == ["power over time per device", "energy by device",
                                            "emissions by region"]
    for c in charts:
        assert c["width"] > 300 and c["height"] > 100 and c["paths"] > 20, c
    assert charts[0]["lines"] >= 4  # a line per device (4 here) plus markers
    assert charts[1]["bars"] >= 4 and charts[2]["bars"] >= 4
    errors = [e for e in events if e["method"] == "Runtime.exceptionThrown"
              or (e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
              or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []
    requests = [e["params"]["request"]["url"] for e in events
                if e["method"] == "Network.requestWillBeSent"]
    assert requests == [url]  # the page itself, nothing else
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("L")
    dark = sum(image.histogram()[:200])
    assert dark > 0.01 * image.width * image.height  # text and charts, not a blank page
    assert os.path.getsize(page) < 2_000_000
