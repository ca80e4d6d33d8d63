"""Intel Power Gadget: PowerLog CSVs in the real format (tests/fixtures/powerlog.py), PowerLog
run once per interval (a fake PowerLog on PATH writing such logs), and a log that a user
runs, followed as it grows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from carbonmeter.probes.base import ProbeUnavailable
from carbonmeter.probes.powergadget import DISCONTINUED, PowerGadgetProbe, parse_log
from tests.fixtures.powerlog import MACOS, WINDOWS, Load, header, log, rows, summary
from tests.helpers import fake_executable, wait_for

REPO = Path(__file__).resolve().parents[2]
LOADS = [Load(processor=15.0, ia=8.0, dram=2.5, gt=1.25),
         Load(processor=40.0, ia=30.0, dram=6.0, gt=0.0)]


@pytest.mark.parametrize("flavour", [WINDOWS, MACOS])
def test_a_log_gives_package_and_dram_never_ia_or_gt(flavour: str) -> None:
    devices, joules = parse_log(log(LOADS, 10.0, 1000, flavour))
    assert devices == ["package-0", "dram-0", "package-1", "dram-1"]
    assert joules == pytest.approx({"package-0": 150.0, "dram-0": 25.0, "package-1": 400.0,
                                    "dram-1": 60.0})


def test_a_log_cut_short_counts_to_its_last_row() -> None:
    text = "\n".join([header(1), *rows(LOADS[:1], 3.0, 500)])
    assert parse_log(text)[1] == pytest.approx({"package-0": 45.0, "dram-0": 7.5})


def test_the_summary_is_the_final_word() -> None:
    """Rows give cumulative energy to the mJ; the summary to the µJ."""
    text = log([Load(7.0001234, 1, 1, 1)], 3.0, 1000)
    assert parse_log(text)[1]["package-0"] == pytest.approx(21.000370, abs=1e-9)  # rows: 21.000


@pytest.fixture
def fake_powerlog(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_executable(bin_dir, "PowerLog", Path(__file__).parents[1] / "fakes" / "fake_powerlog.py")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("FAKE_POWERLOG_LOADS", json.dumps([[15.0, 8.0, 2.5, 1.25]]))
    monkeypatch.setenv("FAKE_POWERLOG_TIME_SCALE", "0.05")
    monkeypatch.setenv("FAKE_POWERLOG_CALLS", str(tmp_path / "calls.jsonl"))
    return tmp_path / "calls.jsonl"


def test_powerlog_runs_back_to_back_and_each_log_adds_its_energy(fake_powerlog) -> None:
    probe = PowerGadgetProbe(command="PowerLog", resolution_ms=250, interval=2, system="win32")
    try:
        assert [(d.id, d.kind) for d in probe.devices] == [("package-0", "cpu"),
                                                          ("dram-0", "dram")]
        assert probe.modes["note"] == DISCONTINUED
        seen: list[dict[str, int]] = []

        def three_logs() -> bool:
            result = probe.read()
            assert result.errors == []
            seen.append({r.device.id: r.counter_uj for r in result.readings})
            return seen[-1].get("package-0", 0) >= 3 * 30_000_000
        wait_for(three_logs, timeout=20, what="three logs")
        last = seen[-1]
        logs = last["package-0"] // 30_000_000  # 15 W for 2 s per log
        assert last == {"package-0": logs * 30_000_000, "dram-0": logs * 5_000_000}
        counts = [s.get("package-0", 0) for s in seen]
        assert counts == sorted(counts)
    finally:
        probe.close()
    calls = [json.loads(line) for line in fake_powerlog.read_text().splitlines()]
    assert calls[0][:4] == ["-resolution", "250", "-duration", "1"]  # the discovery log
    assert calls[1][:4] == ["-resolution", "250", "-duration", "2"]  # then one per interval
    assert all(c[4] == "-file" for c in calls)


def test_powerlog_failing_at_start_is_one_line(fake_powerlog, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_POWERLOG_FAIL", "Error: cannot open the Intel Power Gadget driver")
    with pytest.raises(ProbeUnavailable, match=r"PowerLog failed \(Error: cannot open the Intel"
                                               r" Power Gadget driver\)"):
        PowerGadgetProbe(command="PowerLog", interval=1, system="darwin", machine="x86_64")


def test_where_it_cannot_run_it_says_so_and_that_intel_discontinued_it(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable, match=r"Windows and Intel Macs only.*discontinued"):
        PowerGadgetProbe(system="linux")
    with pytest.raises(ProbeUnavailable, match="Apple Silicon"):
        PowerGadgetProbe(system="darwin", machine="arm64")
    with pytest.raises(ProbeUnavailable, match=r"PowerLog not found at .*discontinued"):
        PowerGadgetProbe(command=str(tmp_path / "PowerLog3.0.exe"), system="win32")


def test_following_a_log_a_user_runs(tmp_path: Path) -> None:
    """Rows are counted as they arrive, a half-written row waits for its end, the summary
    adds nothing, and a new log in the same file (PowerLog restarted, the file rewritten)
    counts from its own start on top of the previous one."""
    path = tmp_path / "powerlog.csv"
    loads = LOADS[:1]
    all_rows = rows(loads, 4.0, 1000)  # cumulative package energy 15, 30, 45, 60 J
    path.write_text(header(1) + "\n" + "\n".join(all_rows[:2]) + "\n")
    probe = PowerGadgetProbe(log_file=str(path), system="linux")

    def counters() -> dict[str, int]:
        result = probe.read()
        assert result.errors == []
        return {r.device.id: r.counter_uj for r in result.readings}

    assert counters() == {"package-0": 30_000_000, "dram-0": 5_000_000}
    with open(path, "a") as f:
        f.write(all_rows[2] + "\n" + all_rows[3][:20])  # the last row only half written
    assert counters()["package-0"] == 45_000_000
    with open(path, "a") as f:
        f.write(all_rows[3][20:] + "\n\n" + "\n".join(summary(loads, 4.0)) + "\n")
    assert counters()["package-0"] == 60_000_000
    path.write_text(header(1) + "\n" + rows(loads, 1.0, 1000)[0] + "\n")  # a new log
    assert counters() == {"package-0": 75_000_000, "dram-0": 12_500_000}
    # PowerLog restarted again and wrote past the place we had read to before we looked:
    # what we read last is no longer there, so the file is read again from its start.
    busier = [Load(processor=20.0, ia=10.0, dram=3.0, gt=0.0)]
    path.write_text(header(1) + "\n" + "\n".join(rows(busier, 8.0, 1000)) + "\n")
    assert counters()["package-0"] == 75_000_000 + 160_000_000
    probe.close()


def test_a_log_that_is_not_powerlogs(tmp_path: Path) -> None:
    path = tmp_path / "other.csv"
    path.write_text("time,watts\n1,2\n")
    with pytest.raises(ProbeUnavailable, match="not a PowerLog file"):
        PowerGadgetProbe(log_file=str(path))
    with pytest.raises(ProbeUnavailable, match="cannot read the PowerLog log"):
        PowerGadgetProbe(log_file=str(tmp_path / "missing.csv"))
