"""/proc reading: the kernel's stat format, PID reuse, processes coming and going.

Fixture trees reproduce /proc/<pid>/stat byte for byte (tests/fixtures/node.py); the kernel's
own behaviour for a task that is gone (ESRCH on a kept fd) is checked on real processes, which
this machine has.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from carbonmeter.attribution.procfs import CLK_TCK, NodeReader, ProcTable, parse_stat
from tests.fixtures.node import FakeNode


@pytest.mark.parametrize("comm", ["(sd-pam)", "my (odd) worker", "a b c", ") (", "x)"])
def test_comm_with_spaces_and_parentheses(comm):
    line = (f"4242 ({comm}) S 17 4242 4242 0 -1 4194560 1234 0 0 0 250 75 9 1 20 0 1 0 "
            "98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 "
            "0 0 0 0 0 0 0 0\n").encode()
    assert parse_stat(line) == (comm.encode(), 17, 325, 10, 98765, 2048)


def test_parses_this_process_as_the_kernel_writes_it():
    with open(f"/proc/{os.getpid()}/stat", "rb") as f:
        comm, ppid, cpu, _children, start, rss = parse_stat(f.read())
    with open(f"/proc/{os.getpid()}/comm", "rb") as f:
        assert comm == f.read().rstrip(b"\n")
    assert ppid == os.getppid() and rss > 0 and start > 0
    t = os.times()
    assert abs(cpu / CLK_TCK - (t.user + t.system)) < 0.05


def test_started_changed_ended_and_pid_reuse(tmp_path):
    node = FakeNode(tmp_path)
    a = node.spawn("system.slice", "a")
    b = node.spawn("system.slice", "b (worker)")
    node.flush()
    table = ProcTable(str(node.procfs), fd_budget=100)
    started, changed, ended = table.refresh()
    assert {p.pid for p in started} == {1, a, b} and not changed and not ended
    assert table.procs[b].comm == b"b (worker)"
    node.run(a, 1.5, 0.5)
    node.flush()
    started, changed, ended = table.refresh()
    assert not started and not ended and [p.pid for p in changed] == [a]
    assert table.procs[a].cpu == 200  # ticks
    node.exit(b)  # a sleeps: its record is unchanged and not parsed again
    node.reuse(a, "system.slice", "a-again")
    node.flush()
    started, changed, ended = table.refresh()
    assert sorted((p.pid, p.comm) for p in ended) == sorted([(a, b"a"), (b, b"b (worker)")])
    assert [(p.pid, p.comm, p.cpu) for p in started] == [(a, b"a-again", 0)]
    assert table.procs[a].start > 0 and not changed
    table.close()


def test_without_descriptors_to_keep_it_reads_all_the_same(tmp_path):
    node = FakeNode(tmp_path)
    pid = node.spawn("system.slice", "x")
    node.flush()
    table = ProcTable(str(node.procfs), fd_budget=0)
    table.refresh()
    node.run(pid, 0.3)
    node.flush()
    _, changed, _ = table.refresh()
    assert [(p.pid, p.cpu) for p in changed] == [(pid, 30)]
    assert all(p.fd == -1 for p in table.procs.values())


def test_a_kept_fd_of_a_reaped_task_fails_with_esrch_and_the_table_sees_it_end():
    child = subprocess.Popen(["sleep", "30"])
    try:
        table = ProcTable("/proc", fd_budget=10_000)
        table.refresh()
        p = table.procs[child.pid]
        assert p.fd >= 0 and p.comm == b"sleep"
        fd = os.dup(p.fd)
    finally:
        child.kill()
        child.wait()
    try:
        with pytest.raises(OSError) as e:  # the kernel's answer for a task that is gone
            os.pread(fd, 1024, 0)
        assert e.value.errno == errno.ESRCH
    finally:
        os.close(fd)
    _, _, ended = table.refresh()
    assert child.pid in {q.pid for q in ended}
    table.close()


def test_measures_real_cpu_time_of_a_real_process():
    burn = ("import sys, time\nsys.stdin.readline()\nt=time.process_time()\n"
            "while time.process_time()-t<0.4: pass\n"
            "sys.stdout.write('done\\n'); sys.stdout.flush(); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
    try:
        table = ProcTable("/proc", fd_budget=10_000)
        table.refresh()
        before = table.procs[child.pid].cpu  # python's start-up, if it got that far
        child.stdin.write(b"go\n")
        child.stdin.flush()
        assert child.stdout.readline() == b"done\n"
        table.refresh()
        spent = (table.procs[child.pid].cpu - before) / CLK_TCK
        assert 0.35 <= spent <= 0.6  # the burn, and the rest of start-up at most
        table.close()
    finally:
        child.kill()
        child.wait()


def test_node_busy_time_and_memory(tmp_path):
    node = FakeNode(tmp_path, ncpu=8, mem_total=32 << 30)
    pid = node.spawn("system.slice", "x")
    node.run(pid, 2.0, 1.0)
    node.irq(0.5)
    node.elapse(10)
    node.flush()
    stat = NodeReader(str(node.procfs)).read()
    assert stat.busy_s == pytest.approx(3.5) and stat.ncpu == 8
    assert stat.mem_total == 32 << 30 and stat.mem_free == 16 << 30
    real = NodeReader("/proc").read()
    assert real.ncpu == os.cpu_count() and real.busy_s > 0 and real.mem_total > real.mem_free
