"""Workload series through restarts of the exporter, by way of a real state file.

A Prometheus counter may only go back when its series is gone and starts again. So when the
exporter restarts, every workload series continues from the value it had; one whose workload
ended while nothing measured is shown once more and then dropped, like any ended one; and the
rows, with the series no longer shown, still add up to the devices' totals (restored too), kind
by kind, through any number of restarts. The node is the fixture of a Kubernetes node's /proc
and cgroup trees (tests/fixtures/node.py); the energy is a wrapping RAPL-like counter.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from carbonmeter import state
from carbonmeter.attribution.attributor import Attributor
from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.sampler import Sampler
from tests.attribution.helpers import CPU, SCRAPE, attributor
from tests.attribution.test_conservation import churn, counters
from tests.fakes.fake_nvml import FakeGpu, FakeNvml
from tests.fakes.probe import ScriptedProbe
from tests.fixtures.node import FakeNode, standard_node

BOOT = "2f0c7e1a-6b4d-4c1e-9a57-3d2b8e9f0a11"
INTENSITY = Static(Intensity(321.0, "x", "config", "t"))
BUSY = {"min_energy_joules": 0, "idle_watts": {"cpu": 0.0}}  # the package's energy is all use


def package(joules: float = 100.0) -> ScriptedProbe:
    """A package counter that spends `joules` between reads."""
    return ScriptedProbe.counting(CPU, joules=joules, name="package")


def series(s: Sampler) -> dict[tuple, float]:
    """(workload, labels, kind) -> joules of every row shown."""
    return {(r.workload, r.labels, r.kind): r.energy_j for r in s.latest.attribution.rows}


def power(s: Sampler, workload: str, labels: tuple) -> float | None:
    (row,) = [r for r in s.latest.attribution.rows if (r.workload, r.labels) == (workload,
                                                                              labels)]
    return row.power_w


def restart(old: Sampler, new_attributor: Attributor, probes: list, store: state.Store, *,
            boot: str = BOOT) -> Sampler:
    """Checkpoint `old`, stop it, and start a sampler on the same probes from the file."""
    assert store.save(BOOT, old.export())
    old.close()
    new = Sampler(probes, INTENSITY, pue=1.3, interval=3600, attributor=new_attributor)
    new.restore(store.load(), boot)
    return new


def worst_imbalance(s: Sampler) -> float:
    """The largest gap, over kinds, between the rows (with hidden series) and the devices."""
    view, worst = s.latest.attribution, 0.0
    for kind in {d.device.kind for d in s.latest.devices}:
        devices = math.fsum(d.energy_j for d in s.latest.devices if d.device.kind == kind)
        rows = math.fsum(r.energy_j for r in view.rows if r.kind == kind)
        worst = max(worst, abs(rows + view.hidden.get(kind, (0.0, 0.0))[0] - devices))
    return worst


@pytest.mark.parametrize(("level", "layout", "top_n"), [
    ("container", "v2", 100), ("pod", "v1", 2), ("process", "hybrid", 10)])
def test_series_continue_and_rows_add_up_through_restarts(ram_path, tmp_path, level, layout,
                                                           top_n):
    rng = random.Random(f"restart-{level}")
    sn = standard_node(ram_path, layout=layout, processes=120)
    on_gpu = [p for p in sn.node.procs if sn.node.procs[p].cgroup.startswith("kube")][:3]
    fake = FakeNvml([FakeGpu(processes=dict.fromkeys(on_gpu, 1 << 30),
                             sm_util=dict.fromkeys(on_gpu, 30))])
    settings = {"top_n": top_n, "idle_policy": "equal", "min_energy_joules": 5, "nvml": fake}
    probes = [counters(rng)]
    store = state.Store(tmp_path / "state.json")
    s = Sampler(probes, INTENSITY, pue=1.3, interval=3600,
                attributor=attributor(sn.node, level, **settings))
    restarts, worst = 0, 0.0
    for n in range(250):
        churn(rng, sn, n)
        fake.advance(1)
        if n % 40 == 39:  # a restart: three intervals of life go by unmeasured
            before, hidden = series(s), s.latest.attribution.hidden
            for k in range(3):
                churn(rng, sn, 1000 + n + k)
            s = restart(s, attributor(sn.node, level, baseline=False, **settings), probes,
                        store)
            restarts += 1
            assert series(s) == before and s.latest.attribution.hidden == hidden
            s.sample()  # the attribution's first read: the usage counters' starting point
            after = series(s)
            assert all(after[k] >= v for k, v in before.items()), "a counter went back"
            assert {r.power_w for r in s.latest.attribution.rows
                    if (r.workload, r.labels, r.kind) in before
                    and r.workload == level} == {None}  # not measured yet: unknown
        else:
            s.sample()
        worst = max(worst, worst_imbalance(s))
        if n % 3 == 0:
            s.latest.attribution.exported(SCRAPE)  # a scrape
    assert restarts == 6 and worst < 1e-6
    assert s.latest.host_energy_j > 20_000
    assert [r for r in s.latest.attribution.rows if r.workload == level and r.energy_j
            and r.power_w is not None]


class Node:
    """Pods a and b, one process each; both busy half a CPU, so each gets half the
    package's energy; a sampler attributing per `level` after `intervals` intervals."""

    def __init__(self, root, level: str, intervals: int) -> None:
        self.node = node = FakeNode(root / "node")
        self.pids: dict[str, int] = {}
        self.uids: dict[str, str] = {}
        for name in ("a", "b"):
            pod = node.add_pod(name, "shop", cpu_millis=1000)
            self.uids[name] = pod.uid
            self.pids[name] = node.spawn(node.add_container(pod, "app", cpu_millis=1000), name)
        node.flush()
        self.probes = [package()]
        self.store = state.Store(root / "state.json")
        self.s = Sampler(self.probes, INTENSITY, pue=1.0, interval=3600,
                         attributor=attributor(node, level, **BUSY))
        for _ in range(intervals):
            self.step()

    def step(self) -> None:
        for pid in self.pids.values():
            self.node.run(pid, 0.5)
        self.node.elapse(1)
        self.node.flush()
        self.s.sample()

    def restart(self, level: str, boot: str = BOOT) -> None:
        self.s = restart(self.s, attributor(self.node, level, baseline=False, **BUSY),
                         self.probes, self.store, boot=boot)


def test_a_running_pod_continues_and_one_gone_is_shown_once_more(tmp_path):
    n = Node(tmp_path, "pod", 3)
    a, b = ("pod", ("", n.uids["a"]), "cpu"), ("pod", ("", n.uids["b"]), "cpu")
    before = series(n.s)
    assert before[a] > 0 and before[b] > 0

    n.node.remove_pod(n.node.pods[n.uids["b"]])  # b ends while the exporter is down
    del n.pids["b"]
    n.restart("pod")
    n.step()  # the first read of usage: all of this interval is unattributed
    assert series(n.s)[a] == before[a] and series(n.s)[b] == before[b]
    n.step()  # a is found again and continues in its series; b is not
    assert series(n.s)[a] > before[a] and power(n.s, "pod", a[1]) > 0
    assert series(n.s)[b] == before[b] and power(n.s, "pod", b[1]) is None  # ended
    n.s.latest.attribution.exported(SCRAPE)  # scraped once more
    n.step()
    assert b not in series(n.s)
    assert n.s.latest.attribution.hidden["cpu"][0] == pytest.approx(before[b])  # not lost
    assert worst_imbalance(n.s) < 1e-9


@pytest.mark.parametrize("same_boot", [True, False])
def test_process_series_continue_only_on_the_same_boot(tmp_path, same_boot):
    """A process is known by its PID and start time, which mean nothing after a reboot: there
    the old series ends (shown once more) and a process with the same numbers starts anew."""
    n = Node(tmp_path, "process", 10)
    key = ("process", (str(n.pids["a"]), "a"), "cpu")
    before = series(n.s)[key]
    assert before == pytest.approx(9 * 50)  # half the package's 100 J, 9 intervals
    n.restart("process", BOOT if same_boot else "another-boot")
    n.step()  # usage's starting point: unattributed
    n.step()  # same boot: a's series goes on; another: a new process, in `other`
    n.s.latest.attribution.exported(SCRAPE)
    n.step()  # the old series, ended after a reboot, is dropped
    n.step()
    if same_boot:
        assert series(n.s)[key] == pytest.approx(before + 3 * 50)
    else:  # a new series, from zero, with the last two intervals
        assert series(n.s)[key] == pytest.approx(2 * 50)
        assert n.s.latest.attribution.hidden["cpu"][0] == pytest.approx(2 * before)  # a, b
    assert worst_imbalance(n.s) < 1e-9


def test_a_changed_level_ends_the_workload_series_and_keeps_the_rest(tmp_path):
    n = Node(tmp_path, "pod", 3)
    rows = n.s.latest.attribution.rows
    pods = math.fsum(r.energy_j for r in rows if r.workload == "pod")
    specials = {r.workload: r.energy_j for r in rows if r.workload != "pod"}
    n.restart("container")
    rows = n.s.latest.attribution.rows
    assert not [r for r in rows if r.workload == "pod"]
    assert {r.workload: r.energy_j for r in rows} == specials  # host, other, unattributed
    assert n.s.latest.attribution.hidden["cpu"][0] == pytest.approx(pods)
    for _ in range(3):
        n.step()
    assert [r for r in n.s.latest.attribution.rows if r.workload == "container" and r.energy_j]
    assert worst_imbalance(n.s) < 1e-9


def test_an_ended_series_restored_again_and_again_keeps_its_value_and_one_key():
    """A crash loop with nothing scraping: the ended series is never exported, so each start
    restores it again; it must neither grow its key nor lose or double its value."""
    from carbonmeter.attribution.ledger import Ledger
    from carbonmeter.attribution.view import Identity

    key = ("pod", "0b7a")
    led = Ledger(top_n=5, min_energy_j=0)
    led.record({key: Identity("pod", ("", "0b7a"))}, {"cpu": {key: 5.0}}, {"cpu": {key: 5.0}},
               0.1)
    led.record({}, {"cpu": {}}, {"cpu": {}}, 0.1)  # gone: ended, not exported yet
    saved = json.loads(json.dumps(led.export()))
    for _ in range(3):
        led = Ledger(top_n=5, min_energy_j=0)
        led.restore(saved)
        led.record(None, {"cpu": {}}, {"cpu": {}}, 0.1)  # killed after one interval
        saved = json.loads(json.dumps(led.export()))
    assert [(w["key"], w["series"]) for w in saved["workloads"]] == [
        (["restored", "pod", "0b7a"], {"cpu": [5.0, 0.5]})]
