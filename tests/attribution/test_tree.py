"""The process tree of one command (`carbonmeter run`): real processes on this machine's /proc,
and exact shares on a fixture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from carbonmeter import config
from carbonmeter.attribution import process_tree, process_tree_share
from carbonmeter.attribution.procfs import CLK_TCK, parse_stat
from carbonmeter.attribution.sources import TREE, TreeSource
from carbonmeter.carbon.intensity import Static
from carbonmeter.sampler import Sampler
from tests.attribution.helpers import CPU, INTENSITY, step, table
from tests.fakes.probe import ScriptedProbe
from tests.fixtures.node import FakeNode

# The root waits for a line, forks a child that burns 0.3 s of CPU and is waited for, waits
# again, burns 0.2 s itself, and exits.
COMMAND = r"""
import os, sys, time
def burn(s):
    t = time.process_time()
    while time.process_time() - t < s:
        pass
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
pid = os.fork()
if pid == 0:
    burn(0.3)
    os._exit(0)
os.waitpid(pid, 0)
sys.stdout.write("child done\n"); sys.stdout.flush()
sys.stdin.readline()
burn(0.2)
"""


def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        _, _, cpu, children, _, _ = parse_stat(f.read())
    return cpu + children


def test_real_tree_counts_waited_for_children_and_the_roots_last_interval():
    root = subprocess.Popen([sys.executable, "-c", COMMAND], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    try:
        assert root.stdout.readline() == b"ready\n"
        source = TreeSource(root.pid, "/proc", 10_000, reaper_pid=os.getpid())
        assert source.sample() is None  # the baseline
        start = ticks(root.pid)
        root.stdin.write(b"go\n")
        root.stdin.flush()
        assert root.stdout.readline() == b"child done\n"
        first = source.sample()
        # the child lived and died between two samples: it is in the root's cutime
        assert first.usage.cpu[TREE] == pytest.approx(0.3, abs=0.08)
        root.stdin.write(b"go\n")
        root.stdin.flush()
        _, status, usage = os.wait4(root.pid, 0)  # we reap the root, as `run` does
        root.returncode = os.waitstatus_to_exitcode(status)
        second = source.sample()
        # the root's last interval is found in what we reaped
        assert second.usage.cpu[TREE] == pytest.approx(0.2, abs=0.08)
        total = usage.ru_utime + usage.ru_stime - start / CLK_TCK
        assert first.usage.cpu[TREE] + second.usage.cpu[TREE] == pytest.approx(total,
                                                                               abs=0.03)
        source.close()
    finally:
        if root.returncode is None:
            root.kill()
            root.wait()


def counter() -> ScriptedProbe:
    return ScriptedProbe.counting(CPU, joules=50.0)


def test_tree_share_on_a_fixture_and_what_run_reads_back(tmp_path):
    node = FakeNode(tmp_path)
    runner = node.spawn("user.slice", "carbonmeter")  # `carbonmeter run` itself
    root = node.spawn("user.slice", "python3", ppid=runner)
    worker = node.spawn("user.slice", "worker", ppid=root)
    stranger = node.spawn("system.slice", "cron")
    node.flush()
    cfg = config.load(env={}, overrides={"paths.procfs": str(node.procfs),
                                         "attribution.idle_watts": {"cpu": 0}})
    sampler = Sampler([counter()], Static(INTENSITY), pue=1.0, interval=3600)
    sampler.sample()  # `run` samples first, then starts the command, then attaches the tree
    sampler.attributor = a = process_tree(root, cfg, [], reaper_pid=runner)
    a.start()
    a.start()  # once only
    sampler.sample()  # 50 J, the tree's first interval: its start-up is not separated
    node.run(root, 0.1)
    node.run(worker, 0.3)
    node.run(stranger, 0.4)
    node.run(runner, 0.2)  # the runner's own work is not the command's
    node.elapse(1)
    node.flush()
    sampler.sample()  # 50 J: the tree ran 0.4 of 1.0 s
    node.run(worker, 0.5)
    node.exit(worker)  # waited for by the root
    node.run(root, 0.5)
    node.exit(root)  # waited for by the runner
    node.elapse(1)
    node.flush()
    snap = sampler.sample()  # 50 J: the tree ran 1.0 of 1.0 s
    share = process_tree_share(snap)
    assert share.energy_j == pytest.approx(20.0 + 50.0)
    assert share.by_kind == pytest.approx({"cpu": 70.0})
    assert share.emissions_g == pytest.approx(70.0 / 3.6e6 * INTENSITY.g_per_kwh)
    assert table(snap.attribution)[("unattributed", "", "")] == pytest.approx(50.0)
    assert "process tree of pid" in share.method
    rows = table(snap.attribution)
    assert rows[("process", str(root), "python3")] == pytest.approx(70.0)
    assert rows[("other", "", "")] == pytest.approx(30.0)
    assert sum(rows.values()) == pytest.approx(snap.host_energy_j)
    assert process_tree_share(Sampler([counter()], Static(INTENSITY), pue=1.0,
                                      interval=1).sample()) is None


def test_idle_policy_requests_reads_as_unattributed_for_a_tree(tmp_path):
    node = FakeNode(tmp_path)
    root = node.spawn("user.slice", "make")
    node.flush()
    cfg = config.load(env={}, overrides={"paths.procfs": str(node.procfs),
                                         "attribution.level": "pod",
                                         "attribution.idle_policy": "requests",
                                         "attribution.idle_watts": {"cpu": 10}})
    a = process_tree(root, cfg, [])
    a.account([], INTENSITY, 1.0)
    node.run(root, 0.5)
    got = table(step(a, node, energy={CPU: 30.0}))
    assert got == pytest.approx({("process", str(root), "make"): 20.0, ("other", "", ""): 0.0,
                                 ("unattributed", "", ""): 10.0})
