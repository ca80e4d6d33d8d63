"""`carbonmeter run`: one headline everywhere, JSON for tools in a file of its own, and a
command that dies with carbonmeter.

The headline is the command's process tree, as `time` reports the command's own time; the
whole machine's figure stands beside it. The summary, the JSON object, the emissions log row
and the report over that log give the same figure. The machine has no power sensor here, so
the CPU and RAM estimates run (and the summary says every figure is an estimate).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from tests.helpers import wait_for

PY = sys.executable
BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"


@pytest.fixture
def estimated(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cpu: {tdp_watts: 100}\nprobes: {disabled: [rapl, nvml]}\n"
                   f"carbon: {{region: FR}}\nemissions_log: {{path: {tmp_path / 'log.csv'}}}\n")
    return cfg


def run(cfg, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "carbonmeter", "run", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=60, **kw)


def test_json_file_leaves_stdout_to_the_command_and_agrees_with_the_log(estimated, tmp_path):
    doc_path = tmp_path / "run.json"
    out = run(estimated, "--interval", "0.1", "--json-file", str(doc_path), "--",
              PY, "-c", BUSY + "print('the command says hi')")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "the command says hi\n"  # `| jq` would get the command's only
    assert "exited with 0" in out.stderr  # the text summary stays on stderr
    doc = json.loads(doc_path.read_text())
    assert doc["schema"] == "carbonmeter.run/2" and doc["exit_code"] == 0
    assert doc["scope"] == "process tree"
    assert 0 < doc["energy_j"] < doc["machine"]["energy_j"]
    assert doc["machine"]["measured_note"] == "0 % measured: every figure is an estimate"

    # the log row carries the headline (a process's row, as CodeCarbon's tracking_mode says)
    with open(tmp_path / "log.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    assert row["tracking_mode"] == "process"
    assert float(row["emissions"]) * 1000 == pytest.approx(doc["emissions_g"], rel=1e-9)
    assert float(row["energy_consumed"]) * 3.6e6 == pytest.approx(doc["energy_j"], rel=1e-9)
    assert float(row["cpu_energy"]) * 3.6e6 == pytest.approx(doc["energy_by_kind_j"]["cpu"],
                                                             rel=1e-9)
    # ... and its devices the machine's breakdown
    devices = json.loads(row["devices"])
    assert sum(d["energy"] for d in devices.values()) * 3.6e6 == pytest.approx(
        doc["machine"]["energy_j"], rel=1e-9)

    # the text says the same: the command first, the machine beside it
    lines = out.stderr.splitlines()
    command = next(line for line in lines if line.startswith("  command "))
    machine = next(line for line in lines if line.startswith("  machine "))
    assert "its process tree:" in command and "every process, while it ran" in machine
    assert "  measured    0 % measured: every figure is an estimate" in lines

    # and the report over the log sums the commands' figures, and says whose they are
    report = subprocess.run([PY, "-m", "carbonmeter", "report", str(tmp_path / "log.csv")],
                            capture_output=True, text=True, timeout=60)
    assert report.returncode == 0, report.stderr
    assert "scope: the commands' process trees (carbonmeter run)" in report.stdout
    assert "by device (the whole machine, while the commands ran)" in report.stdout


def test_json_file_that_cannot_be_written_keeps_the_exit_code(estimated, tmp_path):
    out = run(estimated, "--json-file", str(tmp_path / "no" / "such" / "dir.json"), "--",
              "sh", "-c", "exit 5")
    assert out.returncode == 5
    assert "cannot write the summary to" in out.stderr and "exited with 5" in out.stderr


SLEEPER = "import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(60)\n"


def test_a_sigkilled_run_leaves_no_command_behind(estimated, tmp_path):
    """SIGKILL cannot be caught: only the kernel can end the command then (PR_SET_PDEATHSIG)."""
    pid_file = tmp_path / "child.pid"
    proc = subprocess.Popen([PY, "-m", "carbonmeter", "run", "--config", str(estimated), "--",
                             PY, "-c", SLEEPER, str(pid_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=30,
             what="the command to start")
    child = psutil.Process(int(pid_file.read_text()))
    assert child.ppid() == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)

    def gone() -> bool:
        try:
            return child.status() == psutil.STATUS_ZOMBIE  # dead, not yet reaped by init
        except psutil.NoSuchProcess:
            return True

    try:
        wait_for(gone, timeout=5, what="the command to die with carbonmeter")
    finally:
        if not gone():
            child.kill()
