"""Idle power policies, cardinality bounds and the sidecar's scope."""

from __future__ import annotations

import pytest

from tests.attribution.helpers import CPU, DRAM, attributor, step, table
from tests.fixtures.node import standard_node


def pids_in(node, rel):
    return [p.pid for p in node.procs.values() if p.cgroup == rel]


def test_idle_by_requested_cpus(ram_path):
    sn = standard_node(ram_path, layout="v1", processes=40)  # v1: shares, exact
    node = sn.node  # 4 CPUs; burstable and guaranteed pods request 1 CPU, best-effort none
    a = attributor(node, "pod", idle_policy="requests", idle_watts={"cpu": 40})
    view = step(a, node, energy={CPU: 40.0})  # all idle: nothing ran
    got = table(view)
    web, batch, system = sn.pods
    assert got[("pod", "", web.uid)] == pytest.approx(40 * 1 / 4)
    assert got[("pod", "", system.uid)] == pytest.approx(40 * 1 / 4)
    assert ("pod", "", batch.uid) not in got  # best effort: requests nothing, spent < 1 J
    assert got[("unattributed", "", "")] == pytest.approx(20.0)


def test_idle_by_requests_per_container_on_v2(ram_path):
    sn = standard_node(ram_path, layout="v2", processes=40)
    node = sn.node
    a = attributor(node, "container", idle_policy="requests", idle_watts={"cpu": 80})
    got = table(step(a, node, energy={CPU: 80.0}))
    web = sn.web
    # 500m each, read back from cpu.weight (the kubelet's integer weight: within 3 %)
    for name, cid in web.containers.items():
        assert got[("container", "", web.uid, cid[:12])] == pytest.approx(80 * 0.5 / 4,
                                                                           rel=0.03), name


def test_idle_equal_split(ram_path):
    sn = standard_node(ram_path, processes=40)
    a = attributor(sn.node, "pod", idle_policy="equal", idle_watts={"cpu": 30})
    got = table(step(a, sn.node, energy={CPU: 30.0}))
    for pod in sn.pods:
        assert got[("pod", "", pod.uid)] == pytest.approx(10.0)
    assert got[("unattributed", "", "")] == pytest.approx(0.0, abs=1e-12)


def test_idle_unattributed_is_its_own_series_and_lowest_power_seen_by_default(ram_path):
    sn = standard_node(ram_path, processes=40)
    node = sn.node
    a = attributor(node, "pod")  # no idle_watts: the lowest mean power seen
    pid = pids_in(node, sn.sidecar)[0]
    node.run(pid, 1.0)
    got = table(step(a, node, energy={CPU: 100.0}))
    assert got[("unattributed", "", "")] == pytest.approx(100.0)  # first: all of it idle
    node.run(pid, 1.0)
    got = table(step(a, node, energy={CPU: 60.0}))
    node.run(pid, 1.0)
    view = step(a, node, energy={CPU: 100.0})
    got = table(view)
    assert got[("pod", "", sn.web.uid)] == pytest.approx(40.0)  # 100 - 60 idle, third
    assert got[("unattributed", "", "")] == pytest.approx(100 + 60 + 60)
    assert [(i.device, i.watts, i.how) for i in view.idle] == [("package-0", 60.0,
                                                                "lowest_seen")]


def test_top_n_other_and_minimum_energy(ram_path):
    sn = standard_node(ram_path, processes=1000)
    node = sn.node
    a = attributor(node, "process", top_n=5, min_energy_joules=2, idle_watts={"cpu": 0})
    busy = sorted(node.procs)[100:120]
    for i, pid in enumerate(busy):
        node.run(pid, 0.01 * (i + 1))
    view = step(a, node, energy={CPU: 210.0, DRAM: 5.0})
    rows = [r for r in view.rows if r.workload == "process"]
    shown = {r.labels[0] for r in rows}
    assert shown == {str(p) for p in busy[-5:]}  # the five largest
    got = table(view)
    assert got[("other", "", "")] == pytest.approx(210 * sum(range(1, 16)) / sum(range(1, 21)))
    assert len(view.rows) == 5 * 2 + 3 * 2  # five processes and three special rows, 2 kinds
    # DRAM is shared by RSS among all 1,000 processes, which stay below 2 J: in other
    assert table(view, "dram")[("other", "", "")] > 0


def test_sidecar_sees_its_own_pod_and_the_rest_as_other(ram_path):
    sn = standard_node(ram_path, processes=200)
    node = sn.node
    web = sn.web
    env = {"POD_UID": web.uid, "POD_NAME": "web-7d9f", "POD_NAMESPACE": "shop"}
    a = attributor(node, "pod", env=env, scope="self", idle_watts={"cpu": 0})
    node.run(pids_in(node, sn.sidecar)[0], 0.2)  # the sidecar itself
    node.run(pids_in(node, node.container_rel(web, "c3"))[0], 0.6)
    node.run(pids_in(node, node.container_rel(sn.pods[1], "c1"))[0], 1.0)
    node.run(pids_in(node, sn.services[1])[0], 0.2)
    got = table(step(a, node, energy={CPU: 100.0}))
    assert got == pytest.approx({("pod", "shop", "web-7d9f"): 40.0, ("other", "", ""): 60.0,
                                 ("unattributed", "", ""): 0.0})


def test_sidecar_from_a_downward_api_volume_at_container_level(ram_path):
    sn = standard_node(ram_path, processes=200)
    node = sn.node
    web = sn.web
    info = ram_path / "podinfo"
    info.mkdir()
    for name, value in (("uid", web.uid), ("name", "web-7d9f"), ("namespace", "shop")):
        (info / name).write_text(value + "\n")
    a = attributor(node, "container", scope="self", downward_api_dir=str(info),
                   idle_watts={"cpu": 0})
    node.run(pids_in(node, sn.sidecar)[0], 0.25)
    node.run(pids_in(node, web.sandbox)[0], 0.25)
    node.run(pids_in(node, node.container_rel(sn.pods[1], "c1"))[0], 0.5)
    got = table(step(a, node, energy={CPU: 100.0}))
    side = web.containers["carbonmeter"][:12]
    sandbox = web.sandbox_id[:12]  # without the kubelet, the pause container is one more
    assert got[("container", "shop", "web-7d9f", side)] == pytest.approx(25.0)
    assert got[("container", "shop", "web-7d9f", sandbox)] == pytest.approx(25.0)
    assert got[("other", "", "", "")] == pytest.approx(50.0)
    assert not [k for k in got if k[0] == "host"]


def test_sidecar_at_process_level_sees_only_its_pods_processes(ram_path):
    sn = standard_node(ram_path, processes=200)
    node = sn.node
    mine = pids_in(node, sn.sidecar)[0]
    theirs = pids_in(node, node.container_rel(sn.pods[1], "c1"))[0]
    a = attributor(node, "process", scope="self", env={"POD_UID": sn.web.uid},
                   idle_watts={"cpu": 0})
    node.run(mine, 0.3)
    node.run(theirs, 0.7)
    got = table(step(a, node, energy={CPU: 10.0}))
    comm = node.procs[mine].comm
    assert got == pytest.approx({("process", str(mine), comm): 3.0, ("other", "", ""): 7.0,
                                 ("unattributed", "", ""): 0.0})


def test_sidecar_sharing_the_pods_process_namespace_sees_hidden_paths_as_its_own(ram_path):
    # In a private cgroup namespace (cgroup v2's default for containers) the kernel writes
    # /proc/<pid>/cgroup relative to the reader's cgroup: "0::/" for its own container,
    # "0::/../cri-containerd-<id>.scope" for the pod's other containers.
    sn = standard_node(ram_path, processes=50)
    node = sn.node
    mine = [p.pid for p in node.procs.values() if p.cgroup == sn.sidecar][:2]
    node.flush()
    (node.procfs / str(mine[0]) / "cgroup").write_text("0::/\n")
    (node.procfs / str(mine[1]) / "cgroup").write_text("0::/../cri-containerd-" + "e" * 64 +
                                                       ".scope\n")
    a = attributor(node, "process", scope="self", env={"POD_UID": sn.web.uid},
                   idle_watts={"cpu": 0})
    node.run(mine[0], 0.1)
    node.run(mine[1], 0.1)
    node.run(next(p for p in node.procs if node.procs[p].cgroup == sn.services[0]), 0.2)
    got = table(step(a, node, energy={CPU: 4.0}))
    assert got[("process", str(mine[0]), node.procs[mine[0]].comm)] == pytest.approx(1.0)
    assert got[("process", str(mine[1]), node.procs[mine[1]].comm)] == pytest.approx(1.0)
    assert got[("other", "", "")] == pytest.approx(2.0)
