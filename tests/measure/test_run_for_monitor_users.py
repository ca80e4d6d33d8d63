"""`carbonmeter run` as README maps `codecarbon monitor -- CMD` onto it: the variables that
stand for monitor's options, and the row it writes in CodeCarbon's columns."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from carbonmeter.sinks.emissions_log import CODECARBON_COLUMNS

BURN = "import time\nend = time.monotonic() + 0.6\nwhile time.monotonic() < end: pass\n"


def test_monitor_options_as_variables_give_codecarbons_row(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONMETER_")}
    env.update(CARBONMETER_CARBON_REGION="FRA", CARBONMETER_EMISSIONS_LOG_PATH="emissions.csv",
               CARBONMETER_EMISSIONS_LOG_PROJECT_NAME="nightly", CARBONMETER_LOG_LEVEL="error",
               CARBONMETER_STATE_PATH=str(tmp_path / "state.json"))
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "run", "--interval", "0.2",
                          "--json", "--", sys.executable, "-c", BURN], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stderr)
    with open(tmp_path / "emissions.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert list(row)[:38] == list(CODECARBON_COLUMNS)
    assert (row["project_name"], row["country_iso_code"]) == ("nightly", "FRA")
    assert report["scope"] == "process tree" and row["tracking_mode"] == "process"
    tree_kwh = report["process_tree"]["energy_j"] / 3.6e6 * report["pue"]
    assert float(row["energy_consumed"]) == pytest.approx(tree_kwh, rel=1e-9) and tree_kwh > 0
    machine_kwh = report["energy_j"] / 3.6e6 * report["pue"]
    assert float(row["energy_consumed"]) < machine_kwh
