"""Conservation: the workload rows (with host, other, unattributed and the series no longer
shown) add up to the host's energy, kind by kind, after every interval of a long run in
which containers start and stop, processes come and go and PIDs are reused."""

from __future__ import annotations

import math
import random

import pytest

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes.base import Reading
from carbonmeter.sampler import Sampler
from tests.attribution.helpers import CPU, DRAM, GPU, SCRAPE, attributor
from tests.fakes.fake_nvml import FakeGpu, FakeNvml
from tests.fakes.probe import ScriptedProbe
from tests.fixtures.node import standard_node

WRAP = int(CPU.wrap_uj)


def counters(rng: random.Random) -> ScriptedProbe:
    """RAPL-like counters (wrapping) for a package and its DRAM, and a GPU's power."""
    state = {"cpu": WRAP - 5_000_000, "dram": 0}

    def script(n: int) -> list[Reading]:
        state["cpu"] = (state["cpu"] + rng.randint(20_000_000, 150_000_000)) % WRAP
        state["dram"] = (state["dram"] + rng.randint(1_000_000, 9_000_000)) % int(DRAM.wrap_uj)
        return [Reading(CPU, counter_uj=state["cpu"]), Reading(DRAM, counter_uj=state["dram"]),
                Reading(GPU, power_w=rng.uniform(60, 300))]

    return ScriptedProbe([CPU, DRAM, GPU], script=script)


def churn(rng: random.Random, sn, n: int) -> None:
    """One interval of life on the node."""
    node = sn.node
    pids = list(node.procs)
    for pid in rng.sample(pids, min(len(pids), 15)):
        node.run(pid, rng.randint(0, 30) / 100, rng.randint(0, 10) / 100)
    node.irq(rng.randint(0, 3) / 100)
    if n % 7 == 3:  # a container restarts: the old one stops, a new one starts
        pod = rng.choice(sn.pods)
        name = rng.choice(sorted(pod.containers))
        node.remove_container(pod, name)
        rel = node.add_container(pod, name, generation=n)
        node.run(node.spawn(rel, f"{name}-{n}"), 0.05)
    if n % 5 == 1:  # a short-lived child, waited for by its parent
        parent = rng.choice([p for p in pids if p in node.procs])
        child = node.spawn(node.procs[parent].cgroup, "sh", ppid=parent)
        node.run(child, 0.02)
        node.exit(child)
    if n % 11 == 0:  # a PID reused
        victim = rng.choice([p for p in node.procs if node.procs[p].cgroup.startswith("kube")])
        node.reuse(victim, node.procs[victim].cgroup, f"new-{n}")
    node.elapse(1)
    node.flush()


@pytest.mark.parametrize(("level", "layout", "top_n"), [
    ("container", "v2", 100), ("pod", "v1", 2), ("process", "hybrid", 10)])
def test_rows_add_up_to_the_host_every_interval(ram_path, level, layout, top_n):
    rng = random.Random(f"{level}-{layout}")
    sn = standard_node(ram_path, layout=layout, processes=120)
    on_gpu = [p for p in sn.node.procs if sn.node.procs[p].cgroup.startswith("kube")][:3]
    fake = FakeNvml([FakeGpu(processes=dict.fromkeys(on_gpu, 1 << 30),
                             sm_util=dict.fromkeys(on_gpu, 30))])
    a = attributor(sn.node, level, top_n=top_n, idle_policy="equal", min_energy_joules=5,
                   nvml=fake)
    sampler = Sampler([counters(rng)], Static(Intensity(321.0, "x", "config", "t")), pue=1.3,
                      interval=3600, attributor=a)
    worst_j = worst_g = 0.0
    for n in range(600):
        churn(rng, sn, n)
        fake.advance(1)
        snap = sampler.sample()
        view = snap.attribution
        for kind in ("cpu", "dram", "gpu"):
            host_j = math.fsum(d.energy_j for d in snap.devices if d.device.kind == kind)
            host_g = math.fsum(d.emissions_g for d in snap.devices if d.device.kind == kind)
            rows_j = math.fsum(r.energy_j for r in view.rows if r.kind == kind)
            rows_g = math.fsum(r.emissions_g for r in view.rows if r.kind == kind)
            hidden_j, hidden_g = view.hidden.get(kind, (0.0, 0.0))
            worst_j = max(worst_j, abs(rows_j + hidden_j - host_j))
            worst_g = max(worst_g, abs(rows_g + hidden_g - host_g))
        if n % 3 == 0:
            view.exported(SCRAPE)  # a scrape
    assert snap.host_energy_j > 45_000  # a long run: about 55 kJ
    assert worst_j < 1e-6  # 1 µJ
    assert worst_g < 1e-9
    names = {r.workload for r in view.rows}
    assert {"other", "unattributed"} <= names
    assert all(r.energy_j >= 0 for r in view.rows)
    assert [r for r in view.rows if r.kind == "gpu" and r.workload == level and r.energy_j]
