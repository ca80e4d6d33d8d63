"""Who gets what: shares against CPU-time ratios computed by hand, on fixture nodes with 3 pods,
10 containers and 1,000 processes, for each cgroup layout, driver and runtime."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from carbonmeter.accounting import EnergyDelta
from tests.attribution.helpers import CPU, DRAM, INTENSITY, SCRAPE, attributor, step, table
from tests.fixtures.node import standard_node

LAYOUTS = [("v2", "systemd", "containerd"), ("v1", "systemd", "cri-o"),
           ("hybrid", "cgroupfs", "containerd"), ("v2", "systemd", "docker"),
           ("v1", "cgroupfs", "docker")]


def pids_in(node, rel):
    return [p.pid for p in node.procs.values() if p.cgroup == rel]


@pytest.mark.parametrize(("layout", "driver", "runtime"), LAYOUTS)
def test_container_shares_are_cpu_time_ratios(ram_path, layout, driver, runtime):
    sn = standard_node(ram_path, layout=layout, driver=driver, runtime=runtime)
    node = sn.node
    assert len(node.procs) == 1000 + 1 and sum(len(p.containers) for p in sn.pods) == 10
    a = attributor(node, "container", idle_watts={"cpu": 20})
    pod1, pod2 = sn.pods[1], sn.pods[2]
    c1 = node.container_rel(pod1, "c1")
    c2 = node.container_rel(pod2, "c2")
    node.run(pids_in(node, c1)[0], 0.6, 0.2)  # 0.8 s
    node.run(pids_in(node, c1)[1], 0.4)  # + 0.4 s
    node.run(pids_in(node, c2)[0], 0.3, 0.1)  # 0.4 s
    node.run(pids_in(node, sn.services[0])[0], 0.2)  # kubelet.service
    node.run(pids_in(node, "")[0], 0.1)  # a kernel thread: the host's
    node.irq(0.1)  # interrupts: the host's
    view = step(a, node, energy={CPU: 100.0})
    busy = 1.2 + 0.4 + 0.2 + 0.1 + 0.1
    dynamic = 100.0 - 20.0
    got = table(view)
    cid = pod1.containers["c1"][:12]
    assert got[("container", "", pod1.uid, cid)] == pytest.approx(dynamic * 1.2 / busy)
    assert got[("container", "", pod2.uid, pod2.containers["c2"][:12])] == pytest.approx(
        dynamic * 0.4 / busy)
    assert got[("service", "", "", "kubelet.service")] == pytest.approx(dynamic * 0.2 / busy)
    assert got[("host", "", "", "")] == pytest.approx(dynamic * 0.2 / busy)
    assert got[("unattributed", "", "", "")] == pytest.approx(20.0)
    assert got[("other", "", "", "")] == 0.0
    assert sum(got.values()) == pytest.approx(100.0, abs=1e-9)
    powers = {(r.workload, *r.labels): r.power_w for r in view.rows if r.kind == "cpu"}
    assert powers[("container", "", pod1.uid, cid)] == pytest.approx(dynamic * 1.2 / busy)


@pytest.mark.parametrize(("layout", "driver", "runtime"), LAYOUTS[:3])
def test_pod_shares_and_memory(ram_path, layout, driver, runtime):
    sn = standard_node(ram_path, layout=layout, driver=driver, runtime=runtime)
    node = sn.node
    a = attributor(node, "pod", idle_watts={"cpu": 0})
    web, batch = sn.pods[0], sn.pods[1]
    node.run(pids_in(node, sn.sidecar)[0], 0.5)
    node.run(pids_in(node, node.container_rel(web, "c3"))[0], 1.0)
    node.run(pids_in(node, web.sandbox)[0], 0.05)  # the pause process: the pod's too
    node.run(pids_in(node, node.container_rel(batch, "c1"))[0], 0.45)
    node.set_memory(node.container_rel(batch, "c1"), 1 << 30)
    view = step(a, node, energy={CPU: 50.0, DRAM: 16.0})
    cpu = table(view)
    assert cpu[("pod", "", web.uid)] == pytest.approx(50 * 1.55 / 2.0)
    assert cpu[("pod", "", batch.uid)] == pytest.approx(50 * 0.45 / 2.0)
    assert cpu[("host", "", "")] == pytest.approx(0.0, abs=1e-12)
    # DRAM: bytes charged to each pod out of the 16 GiB installed; free memory is idle
    mem = table(view, "dram")
    for pod in (web, batch):  # memory.current of the pod's cgroup, of 16 GiB installed
        charged = node.cgroups[pod.rel].mem
        assert mem[("pod", "", pod.uid)] == pytest.approx(16.0 * charged / node.mem_total)
    assert mem[("unattributed", "", "")] == pytest.approx(16.0 * node.mem_free / node.mem_total)
    assert sum(mem.values()) == pytest.approx(16.0)


def test_a_container_that_stops_between_samples_keeps_its_last_interval(ram_path):
    sn = standard_node(ram_path, processes=60)
    node = sn.node
    a = attributor(node, "container", idle_watts={"cpu": 0})
    pod = sn.pods[1]
    old = node.container_rel(pod, "c1")
    old_id = pod.containers["c1"][:12]
    node.run(pids_in(node, old)[0], 1.0)
    step(a, node)
    # between two samples: c1 runs 0.5 s and stops; c4 starts, runs 0.25 s; a process of
    # c7 starts and exits unseen (its time stays in c7's cgroup)
    node.run(pids_in(node, old)[0], 0.5)
    node.remove_container(pod, "c1")
    new = node.add_container(pod, "c4", cpu_millis=100, generation=1)
    node.run(node.spawn(new, "fresh"), 0.25)
    c7 = node.container_rel(pod, "c7")
    brief = node.spawn(c7, "brief", ppid=pids_in(node, c7)[0])
    node.run(brief, 0.25)
    node.exit(brief)
    view = step(a, node, energy={CPU: 100.0})
    got = table(view)
    assert got[("container", "", pod.uid, old_id)] == pytest.approx(100 + 100 * 0.5 / 1.0)
    row = next(r for r in view.rows if r.labels == ("", pod.uid, old_id) and r.kind == "cpu")
    assert row.power_w is None  # ended: shown until exported, without a power
    assert got[("container", "", pod.uid, pod.containers["c4"][:12])] == pytest.approx(25.0)
    assert got[("container", "", pod.uid, pod.containers["c7"][:12])] == pytest.approx(25.0)
    view.exported(SCRAPE)
    view = step(a, node, energy={CPU: 10.0})
    assert ("container", "", pod.uid, old_id) not in table(view)
    assert view.hidden["cpu"][0] == pytest.approx(150.0)


def test_a_pod_deleted_between_samples_keeps_its_last_interval(ram_path):
    sn = standard_node(ram_path, processes=40)
    node = sn.node
    a = attributor(node, "pod", idle_watts={"cpu": 0})
    batch = sn.pods[1]
    node.run(pids_in(node, node.container_rel(batch, "c1"))[0], 0.5)
    node.run(pids_in(node, sn.sidecar)[0], 0.5)
    step(a, node)
    node.run(pids_in(node, node.container_rel(batch, "c1"))[0], 0.3)
    node.run(pids_in(node, sn.sidecar)[0], 0.1)
    node.remove_pod(batch)  # its time stays in kubepods-besteffort.slice
    got = table(step(a, node, energy={CPU: 40.0}))
    assert got[("pod", "", batch.uid)] == pytest.approx(50.0 + 40 * 0.3 / 0.4)
    assert got[("pod", "", sn.web.uid)] == pytest.approx(50.0 + 40 * 0.1 / 0.4)


def test_processes_pid_reuse_and_children_that_lived_between_samples(ram_path):
    sn = standard_node(ram_path, processes=50)
    node = sn.node
    victim = node.spawn(sn.sidecar, "python3")
    a = attributor(node, "process", idle_watts={"cpu": 0}, min_energy_joules=0)
    shell = node.spawn(sn.sidecar, "sh")
    child = node.spawn(sn.sidecar, "make", ppid=shell)
    node.run(child, 0.5)
    got = table(step(a, node))
    assert got[("process", str(child), "make")] == pytest.approx(100.0)  # born, ran: all
    # make runs 0.3 s more and exits, waited for by the shell; cc1 lives entirely between
    # the samples (0.2 s), waited for by the shell too: both are the shell's
    node.run(child, 0.3)
    node.exit(child)
    unseen = node.spawn(sn.sidecar, "cc1", ppid=shell)
    node.run(unseen, 0.2)
    node.exit(unseen)
    node.run(victim, 0.1)
    got = table(step(a, node))
    assert got[("process", str(child), "make")] == pytest.approx(100.0)
    assert got[("process", str(shell), "sh")] == pytest.approx(100 * 0.5 / 0.6)
    assert got[("process", str(victim), "python3")] == pytest.approx(100 * 0.1 / 0.6)
    # the victim exits and its PID goes to a new process
    node.reuse(victim, sn.sidecar, "java")
    node.run(victim, 0.4)
    node.run(shell, 0.1)
    view = step(a, node)
    got = table(view)
    assert got[("process", str(victim), "java")] == pytest.approx(80.0)
    assert got[("process", str(victim), "python3")] == pytest.approx(100 * 0.1 / 0.6)
    assert got[("process", str(shell), "sh")] == pytest.approx(100 * 0.5 / 0.6 + 20.0)
    power = {r.labels: r.power_w for r in view.rows if r.kind == "cpu"}
    assert power[(str(victim), "python3")] is None and power[(str(victim), "java")] == 80.0


def test_a_failing_read_is_reported_and_that_intervals_energy_unattributed(ram_path, caplog):
    caplog.set_level(logging.INFO)
    sn = standard_node(ram_path, processes=60)
    node = sn.node
    a = attributor(node, "pod", idle_watts={"cpu": 0})
    pid = pids_in(node, sn.sidecar)[0]
    node.run(pid, 1.0)
    step(a, node, energy={CPU: 10.0})
    stat = node.procfs / "stat"
    stat.rename(node.procfs / "stat.away")  # /proc unmounted under the exporter
    node.run(pid, 1.0)
    node.elapse(1)
    a.account([EnergyDelta(CPU, 10.0, 1.0)], INTENSITY, 1.0)
    a.account([EnergyDelta(CPU, 10.0, 1.0)], INTENSITY, 1.0)
    got = table(a.view())
    assert got[("pod", "", sn.web.uid)] == pytest.approx(10.0)
    assert got[("unattributed", "", "")] == pytest.approx(20.0)
    assert [r.power_w for r in a.view().rows if r.workload == "pod"] == [0.0]  # still there
    assert caplog.text.count("cannot read workload usage") == 1
    (node.procfs / "stat.away").rename(stat)
    node.run(pid, 1.0)
    got = table(step(a, node, energy={CPU: 10.0}))
    assert got[("pod", "", sn.web.uid)] == pytest.approx(20.0)  # back, the missed CPU too
    assert "reading workload usage again" in caplog.text


@dataclass(frozen=True)
class ScopedDevice:
    """A device with a scope, as probes declare whole-host meters (IPMI, Redfish)."""

    id: str
    kind: str
    source: str
    scope: str = "part"


def test_with_a_whole_host_meter_rows_add_up_to_the_meter(ram_path):
    from carbonmeter.attribution.attributor import host_deltas

    sn = standard_node(ram_path, processes=40)
    node = sn.node
    a = attributor(node, "pod", idle_watts={"cpu": 0, "platform": 0})
    bmc = ScopedDevice("bmc", "platform", "ipmi", "host")
    pkg = ScopedDevice("package-0", "cpu", "rapl")
    switch = ScopedDevice("switch", "other", "declared", "beside")
    node.run(pids_in(node, sn.sidecar)[0], 1.0)
    node.elapse(1)
    node.flush()
    deltas = [EnergyDelta(bmc, 300.0, 1.0), EnergyDelta(pkg, 120.0, 1.0),
              EnergyDelta(switch, 40.0, 1.0)]
    a.account(deltas, INTENSITY, 1.0)
    view = a.view()
    assert sum(r.energy_j for r in view.rows) == pytest.approx(300.0 + 40.0)  # the host total
    assert table(view, "cpu")[("pod", "", sn.web.uid)] == pytest.approx(120.0)
    assert table(view, "platform")[("pod", "", sn.web.uid)] == pytest.approx(180.0)
    assert table(view, "other")[("unattributed", "", "")] == pytest.approx(40.0)
    # a meter that reads less than its parts is the host total: the parts scale down to it
    low = host_deltas([EnergyDelta(bmc, 100.0, 1.0), EnergyDelta(pkg, 200.0, 1.0)])
    assert [(d.device.id, d.energy_j) for d in low] == [("package-0", 100.0)]
    assert host_deltas([EnergyDelta(pkg, 5.0, 1.0)])[0].energy_j == 5.0
