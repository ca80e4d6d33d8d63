"""The emissions log: CodeCarbon 3.3.2's columns and units, read back with the csv module, durable.

The kill test runs a real writer process and kills it with SIGKILL while it appends: what
the kernel keeps of a file after a process dies mid-write() is what a crash leaves.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import find_region
from carbonmeter.probes.base import Device
from carbonmeter.sinks.emissions_log import (
    CODECARBON_COLUMNS,
    COLUMNS,
    OWN_COLUMNS,
    TASK_COLUMNS,
    EmissionsLog,
    Load,
    RowContext,
    continued_columns,
    location_of,
    row,
    rows_for,
    write_task_file,
)
from carbonmeter.usage import DeviceUsage, Usage

ROOT = Path(__file__).resolve().parents[2]
FR = find_region("FR")
CTX = RowContext("proj", "run-1", "exp-1")


def usage(duration: float = 10.0, *, name: str = "", tasks: tuple[Usage, ...] = (),
          scale: float = 1.0) -> Usage:
    """package-0 360 J and dram-0 36 J measured, gpu-0 720 J, ram 3.6 J estimated, in FR."""
    g = FR.g_per_kwh * 1.5 / 3.6e6  # grams per joule at PUE 1.5
    devices = tuple(DeviceUsage(Device(i, k, s, n, est), j * scale, j * scale * g)
                    for i, k, s, n, est, j in (
        ("package-0", "cpu", "rapl", "Intel Xeon Gold 6226R", False, 360.0),
        ("dram-0", "dram", "rapl", "dram", False, 36.0),
        ("gpu-0", "gpu", "nvml", "NVIDIA A100-SXM4-40GB", False, 720.0),
        ("ram", "ram", "ram_model", "16.0 GiB", True, 3.6),
    ))
    return Usage(name, 1_700_000_000.0, duration, devices,
                 Intensity(FR.g_per_kwh, "FR", "bundled", FR.source, FR.year), 1.5, tasks)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_codecarbon_columns_names_order_and_units(tmp_path):
    path = tmp_path / "emissions.csv"
    EmissionsLog(path).append([row(usage(), CTX)])
    rows = read_csv(path)
    assert list(rows[0]) == list(COLUMNS)
    assert list(COLUMNS[:38]) == list(CODECARBON_COLUMNS) and len(CODECARBON_COLUMNS) == 38
    r = rows[0]
    kwh = 1119.6 / 3.6e6 * 1.5  # CodeCarbon's energy columns have the PUE applied
    # CodeCarbon's units: s, kg, kg/s, W, kWh, L, GB; ISO alpha-3; Y/N.
    assert float(r["duration"]) == 10.0
    assert float(r["energy_consumed"]) == pytest.approx(kwh, rel=1e-12)
    assert float(r["cpu_energy"]) == pytest.approx(360 * 1.5 / 3.6e6, rel=1e-12)
    assert float(r["ram_energy"]) == pytest.approx(39.6 * 1.5 / 3.6e6, rel=1e-12)  # DRAM + RAM
    assert float(r["gpu_power"]) == pytest.approx(72.0 * 1.5, rel=1e-12)  # 720 J in 10 s
    assert float(r["emissions"]) == pytest.approx(kwh * FR.g_per_kwh / 1000, rel=1e-12)
    assert float(r["emissions_rate"]) == pytest.approx(float(r["emissions"]) / 10, rel=1e-12)
    assert float(r["water_consumed"]) == 0.0 and float(r["wue"]) == 0.0
    assert r["country_iso_code"] == "FRA" and r["country_name"] == "France"
    assert r["region"] == r["longitude"] == r["latitude"] == ""  # CodeCarbon's unset values
    assert r["on_cloud"] == "N" and r["tracking_mode"] == "machine" and float(r["pue"]) == 1.5
    assert r["project_name"] == "proj" and r["run_id"] == "run-1" and r["experiment_id"] == "exp-1"
    assert r["cpu_model"] == "Intel Xeon Gold 6226R" and r["codecarbon_version"] == "3.3.2"
    assert r["gpu_count"] == "1" and r["gpu_model"] == "1 x NVIDIA A100-SXM4-40GB"
    assert float(r["ram_total_size"]) > 0 and int(r["cpu_count"]) >= 1
    # local time to the second, no offset, as CodeCarbon writes it; the precise start beside
    ended = datetime.fromtimestamp(1_700_000_010.0)
    assert r["timestamp"] == ended.strftime("%Y-%m-%dT%H:%M:%S")
    assert r["started"] == "2023-11-14T22:13:20.000+00:00"
    assert float(r["carbon_intensity"]) == FR.g_per_kwh
    devices = json.loads(r["devices"])
    assert devices["ram"] == {"kind": "ram", "source": "ram_model", "estimated": True,
                              "energy": pytest.approx(1e-6), "emissions": pytest.approx(
                                  3.6 * FR.g_per_kwh * 1.5 / 3.6e6 / 1000)}


def test_water_cpu_use_and_memory_come_from_the_context_and_the_load():
    ctx = RowContext("proj", "run-1", wue=1.8, dram_in_cpu=True)
    a, b = Load(100.0, 400.0, 3.0, 20.0), Load(130.0, 440.0, 5.0, 30.0)
    r = row(usage(), ctx, load=(a, b))
    assert r["water_consumed"] == pytest.approx(r["energy_consumed"] * 1.8)
    assert r["cpu_utilization_percent"] == pytest.approx(75.0)  # 30 busy s of 40
    assert (r["ram_used_gb"], r["ram_utilization_percent"]) == (4.0, 25.0)
    assert r["cpu_energy"] == pytest.approx(396 * 1.5 / 3.6e6)  # DRAM with the CPU
    assert r["ram_energy"] == pytest.approx(3.6 * 1.5 / 3.6e6)


@pytest.mark.parametrize(("code", "expected"), [
    ("FR", ("France", "FRA", None, "", "")),
    ("US-CA", ("United States", "USA", "california", "", "")),
    ("CA-QC", ("Canada", "CAN", "quebec", "", "")),
])
def test_location_columns_of_a_grid_region(code, expected):
    loc = location_of(find_region(code))
    assert (loc.country_name, loc.country_iso_code, loc.region, loc.cloud_provider,
            loc.cloud_region) == expected and loc.on_cloud == "N"


def test_location_columns_of_a_cloud_region():
    from carbonmeter.carbon.regions import find_cloud

    loc = location_of(find_cloud("gcp", "europe-west9"))  # "Paris, France"
    assert (loc.country_name, loc.country_iso_code, loc.region) == ("France", "FRA", "Paris")
    assert (loc.cloud_provider, loc.cloud_region, loc.on_cloud) == ("gcp", "europe-west9", "Y")


def test_tasks_get_their_own_rows_named_by_path(tmp_path):
    inner = usage(2, name="forward", scale=0.1)
    outer = usage(5, name="epoch", tasks=(inner,), scale=0.5)
    path = tmp_path / "log.csv"
    EmissionsLog(path).append(rows_for(usage(tasks=(outer,)), CTX))
    assert [r["task_name"] for r in read_csv(path)] == ["", "epoch", "epoch/forward"]


def test_json_lines_has_the_same_keys_and_real_numbers(tmp_path):
    path = tmp_path / "log.jsonl"
    log = EmissionsLog(path, "jsonl")
    log.append([row(usage(), CTX)])
    log.append([row(usage(), CTX)])
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first) == list(COLUMNS)
    assert isinstance(first["energy_consumed"], float)
    assert first["devices"]["gpu-0"]["kind"] == "gpu"


def test_appends_keep_one_header(tmp_path):
    path = tmp_path / "log.csv"
    log = EmissionsLog(path)
    for _ in range(3):
        log.append([row(usage(), CTX)])
    assert len(read_csv(path)) == 3
    assert path.read_text().count("timestamp,") == 1


def test_a_file_with_another_header_is_backed_up_as_codecarbon_does(tmp_path, caplog):
    """Another header: renamed to NAME.bak, then NAME_0.bak, ... (CodeCarbon's names), never
    overwritten, and a new file begun."""
    path = tmp_path / "emissions.csv"
    theirs = "timestamp,project_name,run_id,duration,emissions\n2024-01-01T00:00:00,x,y,1,2\n"
    path.write_text(theirs)
    with caplog.at_level(logging.WARNING):
        EmissionsLog(path).append([row(usage(), CTX)])
    assert (tmp_path / "emissions.csv.bak").read_text() == theirs
    assert len(read_csv(path)) == 1 and "kept as emissions.csv.bak" in caplog.text
    for backup in ("emissions.csv_0.bak", "emissions.csv_1.bak"):
        path.write_text(theirs)  # again: a new backup each time, the others untouched
        EmissionsLog(path).append([row(usage(), CTX)])
        assert (tmp_path / backup).read_text() == theirs
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "emissions.csv", "emissions.csv.bak", "emissions.csv_0.bak", "emissions.csv_1.bak"]


def test_codecarbons_own_file_is_continued_in_its_own_column_order(tmp_path):
    """CodeCarbon accepts its columns in any order; rows added here follow the file's order
    and hold only its columns, so CodeCarbon can go on appending to the same file."""
    path = tmp_path / "emissions.csv"
    header = list(reversed(CODECARBON_COLUMNS))
    path.write_text(",".join(header) + "\n" + ",".join("1" for _ in header) + "\n")
    EmissionsLog(path).append([row(usage(), CTX)])
    assert [p.name for p in tmp_path.iterdir()] == ["emissions.csv"]
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == header and len(rows) == 3 and len(rows[2]) == 38
    added = dict(zip(header, rows[2], strict=True))
    assert added["run_id"] == "run-1" and added["country_iso_code"] == "FRA"
    assert continued_columns(",".join([*CODECARBON_COLUMNS, "task_name"]).encode()) == \
        [*CODECARBON_COLUMNS, "task_name"]  # an older or newer log of ours, with fewer columns
    assert continued_columns(",".join([*CODECARBON_COLUMNS, "mine"]).encode()) is None
    assert continued_columns(",".join(CODECARBON_COLUMNS[1:]).encode()) is None


def test_update_replaces_the_runs_row_as_codecarbon_does(tmp_path, caplog):
    path = tmp_path / "emissions.csv"
    log_ = EmissionsLog(path)
    log_.append([row(usage(), RowContext("p", "other"))])
    for seconds in (10.0, 20.0, 30.0):
        log_.replace_run("run-1", row(usage(seconds), CTX))
    rows = read_csv(path)
    assert [(r["run_id"], r["duration"]) for r in rows] == [("other", "10.0"),
                                                            ("run-1", "30.0")]
    log_.append([row(usage(), CTX)])  # two rows of run-1 now: CodeCarbon then appends
    with caplog.at_level(logging.WARNING):
        log_.replace_run("run-1", row(usage(40.0), CTX))
    assert [r["duration"] for r in read_csv(path)] == ["10.0", "30.0", "10.0", "40.0"]
    assert "appending instead of updating" in caplog.text


def test_the_task_file_drops_columns_empty_in_every_row_as_codecarbon_does(tmp_path):
    path = tmp_path / "emissions_base_run-1.csv"
    load = (Load(0.0, 10.0, 1.0, 5.0, 50.0), Load(5.0, 20.0, 1.0, 5.0, 70.0))
    tasks = [dict(row(usage(name="a"), CTX, load=load), task_name=n) for n in ("a", "a_2")]
    write_task_file(path, tasks)
    rows = read_csv(path)
    assert [r["task_name"] for r in rows] == ["a", "a_2"]
    assert rows[0]["gpu_utilization_percent"] == "60.0"  # NVML's, at the start and the end
    columns = list(rows[0])
    assert columns[:len(TASK_COLUMNS) - 3] == [
        c for c in TASK_COLUMNS if c not in ("region", "longitude", "latitude")]
    assert "experiment_id" not in columns
    assert columns[len(TASK_COLUMNS) - 3:] == [c for c in OWN_COLUMNS if c != "task_name"]


def test_a_torn_last_row_is_cut_before_the_next_append(tmp_path):
    path = tmp_path / "log.csv"
    log = EmissionsLog(path)
    log.append([row(usage(), CTX)])
    with open(path, "ab") as f:
        f.write(b"2024-01-01T00:00:00,proj,run-2,,1.0,0.0")  # died mid-row
    log.append([row(usage(), CTX)])
    rows = read_csv(path)
    assert len(rows) == 2 and all(r["run_id"] == "run-1" for r in rows)


WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from tests.sinks.test_emissions_log import usage, CTX
from carbonmeter.sinks.emissions_log import EmissionsLog, row
log = EmissionsLog(sys.argv[1])
r = row(usage(), CTX)
r["task_name"] = "x" * 20000  # long rows: the kill lands inside a write more often
n = 0
while True:
    log.append([r] * 5)
    n += 5
    print(n, flush=True)
"""


def test_sigkill_during_appends_leaves_every_earlier_row_intact(tmp_path):
    path = tmp_path / "log.csv"
    reported = 0
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT)), str(path)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        confirmed = 0
        deadline = time.monotonic() + 20
        while confirmed < 20 * (attempt + 1) and time.monotonic() < deadline:
            confirmed = int(proc.stdout.readline())
        time.sleep(0.01 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        reported += confirmed
        rows = read_csv(path)
        # every batch reported as written is there, whole; at most a torn tail follows
        whole = [r for r in rows if None not in r.values() and len(r["task_name"]) == 20000]
        assert len(whole) >= reported
        assert len(rows) - len(whole) <= 1
        assert all(r["run_id"] == "run-1" and float(r["duration"]) == 10.0 for r in whole)
    EmissionsLog(path).append([row(usage(), CTX)])  # the next writer repairs the tail
    rows = read_csv(path)
    assert all(None not in r.values() for r in rows)
    assert rows[-1]["task_name"] == ""


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "log.csv"
    code = WRITER.format(root=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)],
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None
        while int(p.stdout.readline()) < 20:
            pass
    for p in procs:
        p.terminate()
        p.wait(10)
    rows = read_csv(path)
    assert len(rows) >= 40
    torn = [r for r in rows if None in r.values() or len(r["task_name"]) != 20000]
    assert len(torn) <= 1  # only a row being written when it was stopped
    assert path.read_text().count("timestamp,") == 1


def test_write_errors_raise_oserror(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        EmissionsLog(blocker / "log.csv").append([row(usage(), CTX)])
    assert os.path.getsize(blocker) == 0
