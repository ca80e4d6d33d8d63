"""Which /proc files are read, and when: schedstat as the sign that a process ran, stat when
it did (or its RSS or parent may have changed without it running), an incremental listing.

The fixture writes /proc/<pid>/schedstat as the kernel does (tests/fixtures/node.py): it moves
when the thread group leader runs, not when another thread does, nor when the kernel reclaims
a sleeping process's pages or re-parents it. Listing /proc from an offset is the real
kernel's behaviour, checked on real processes.
"""

from __future__ import annotations

import os
import subprocess

from carbonmeter.attribution.procfs import STAT_EVERY, ProcTable
from tests.fixtures.node import PAGE, FakeNode


def _node(tmp_path, n=5, **spawn):
    node = FakeNode(tmp_path)
    pids = [node.spawn("system.slice", f"p{i}", **spawn) for i in range(n)]
    node.flush()
    table = ProcTable(str(node.procfs), fd_budget=1000)
    table.refresh()
    return node, pids, table


def test_sleepers_are_not_read_again_but_whoever_runs_is(tmp_path):
    node, pids, table = _node(tmp_path, 50)
    node.run(pids[3], 0.25)
    node.set_rss(pids[4], 64 << 20)  # faulting memory in: it ran, for less than a tick
    node.flush()
    _, changed, _ = table.refresh()
    assert sorted(p.pid for p in changed) == sorted(pids[3:5])
    assert table.procs[pids[3]].cpu == 25 and table.procs[pids[4]].rss == (64 << 20) // PAGE
    assert table.stat_reads < 2 + len(table.procs) // STAT_EVERY + 1  # the rest: schedstat
    table.close()


def test_rss_reclaimed_from_a_sleeper_is_seen_within_stat_every_intervals(tmp_path):
    node, pids, table = _node(tmp_path)
    node.reclaim(pids[0], 6 << 20)
    node.flush()
    rss = []
    for _ in range(STAT_EVERY):
        table.refresh()
        rss.append(table.procs[pids[0]].rss)
    assert rss[-1] == (2 << 20) // PAGE and rss[0] in (rss[-1], (8 << 20) // PAGE)
    table.close()


def test_without_schedstat_every_stat_is_read(tmp_path):
    node, pids, table = _node(tmp_path)
    table.close()
    for pid in [*pids, 1]:  # a kernel without CONFIG_SCHED_INFO: no file, or zeros
        path = node.procfs / str(pid) / "schedstat"
        os.chmod(path, 0o644)
        if pid % 2:
            path.unlink()
        else:
            path.write_text("0 0 0\n")
    table = ProcTable(str(node.procfs), fd_budget=1000)
    table.refresh()
    node.reclaim(pids[1], 4 << 20)
    node.run(pids[2], 0.5)
    node.flush()
    _, changed, _ = table.refresh()
    assert {p.pid for p in changed} == {pids[1], pids[2]}
    assert table.stat_reads == len(pids) + 1
    table.close()


def test_another_threads_time_is_seen_at_once(tmp_path):
    node, pids, table = _node(tmp_path, threads=8)
    node.run(pids[0], 0.4, leader=False)  # the leader waits; a worker thread runs
    node.flush()
    _, changed, _ = table.refresh()
    assert [(p.pid, p.cpu, p.threads) for p in changed] == [(pids[0], 40, 8)]
    table.close()


def test_an_orphan_is_read_again_when_its_parent_exits(tmp_path):
    node, pids, table = _node(tmp_path)
    child = node.spawn("system.slice", "orphan", ppid=pids[0])
    node.flush()
    table.refresh()
    node.exit(pids[0], reaped=False)
    node.reparent(child, 1)  # the kernel hands it to init; it does not run for that
    node.flush()
    _, changed, ended = table.refresh()
    assert [p.pid for p in ended] == [pids[0]]
    assert [p.pid for p in changed] == [child] and table.procs[child].ppid == 1
    table.close()


def test_a_listed_pid_that_cannot_be_read_is_skipped(tmp_path):
    node, pids, table = _node(tmp_path)
    (node.procfs / "4242").mkdir()  # listed, then gone before its files were read
    node.run(pids[0], 0.1)
    node.flush()
    started, changed, _ = table.refresh()
    assert not started and [p.pid for p in changed] == [pids[0]]
    assert 4242 not in table.procs
    table.close()


def test_real_proc_is_listed_from_the_last_pid_and_still_sees_every_start_and_end():
    table = ProcTable("/proc", fd_budget=10_000)
    table.refresh()
    assert table.listed  # the first refresh lists all of /proc
    child = subprocess.Popen(["sleep", "30"])
    try:
        started, _, _ = table.refresh()
        assert not table.listed  # from the last PID handed out: only the new ones
        assert child.pid in {p.pid for p in started}
        assert table.procs[child.pid].comm == b"sleep"
    finally:
        child.kill()
        child.wait()
    _, _, ended = table.refresh()
    assert child.pid in {p.pid for p in ended} and child.pid not in table.procs
    table.close()
