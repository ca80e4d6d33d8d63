"""GPU energy to the workloads using the GPU, through NVML's per-process functions (the fake
NVML raises the real pynvml errors and returns pynvml's own structures)."""

from __future__ import annotations

import pytest

from tests.attribution.helpers import GPU, INTENSITY, attributor, step, table
from tests.fakes.fake_nvml import FakeGpu, FakeNvml
from tests.fixtures.node import standard_node


def first_pid(node, rel):
    return next(p.pid for p in node.procs.values() if p.cgroup == rel)


@pytest.fixture
def gpu_node(ram_path):
    sn = standard_node(ram_path, processes=100)
    node = sn.node
    train = first_pid(node, node.container_rel(sn.pods[1], "c1"))
    serve = first_pid(node, node.container_rel(sn.pods[2], "c2"))
    host = first_pid(node, sn.services[2])
    return sn, train, serve, host


def test_shared_by_per_process_utilisation(gpu_node):
    sn, train, serve, host = gpu_node
    gpu = FakeGpu(processes={train: 30 << 30, serve: 2 << 30, host: 1 << 20},
                  sm_util={train: 60, serve: 20, host: 20})
    fake = FakeNvml([gpu])
    a = attributor(sn.node, "container", nvml=fake, idle_watts={"gpu": 50})
    fake.advance(0.5)
    fake.advance(0.5)
    got = table(step(a, sn.node, energy={GPU: 300.0}), "gpu")
    pod1, pod2 = sn.pods[1], sn.pods[2]
    assert got[("container", "", pod1.uid, pod1.containers["c1"][:12])] == pytest.approx(150)
    assert got[("container", "", pod2.uid, pod2.containers["c2"][:12])] == pytest.approx(50)
    assert got[("service", "", "", "ssh.service")] == pytest.approx(50)
    assert got[("unattributed", "", "", "")] == pytest.approx(50)  # idle: 50 W x 1 s
    # no new sample since the last call (NVML: Not Found): the holders, by memory held
    got = table(step(a, sn.node, energy={GPU: 50.0 + 32 + 1 / 1024}), "gpu")
    assert got[("container", "", pod1.uid, pod1.containers["c1"][:12])] == pytest.approx(180)
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 2


def test_without_per_process_utilisation_the_holder_gets_it_whole(gpu_node):
    sn, train, _serve, _host = gpu_node
    gpu = FakeGpu(processes={train: None}, process_utilization=False)  # memory unknown too
    fake = FakeNvml([gpu])
    a = attributor(sn.node, "pod", nvml=fake, idle_watts={"gpu": 40})
    got = table(step(a, sn.node, energy={GPU: 100.0}), "gpu")
    assert got == pytest.approx({("pod", "", sn.pods[1].uid): 60.0, ("host", "", ""): 0.0,
                                 ("other", "", ""): 0.0, ("unattributed", "", ""): 40.0})
    step(a, sn.node, energy={GPU: 100.0})
    assert fake.calls["nvmlDeviceGetProcessUtilization"] == 1  # not asked again


def test_an_idle_gpu_and_a_failing_one(gpu_node, caplog):
    sn, train, _serve, _host = gpu_node
    gpu = FakeGpu()
    fake = FakeNvml([gpu])
    a = attributor(sn.node, "process", nvml=fake, idle_watts={"gpu": 40})
    got = table(step(a, sn.node, energy={GPU: 45.0}), "gpu")
    assert got[("unattributed", "", "")] == pytest.approx(45.0)  # nobody on it
    gpu.processes = {train: 1 << 30}
    gpu.lose()
    got = table(step(a, sn.node, energy={GPU: 45.0}), "gpu")
    assert got[("unattributed", "", "")] == pytest.approx(90.0)
    assert "gpu-0: cannot list its processes" in caplog.text
    gpu.fail(None)
    got = table(step(a, sn.node, energy={GPU: 45.0}), "gpu")
    comm = sn.node.procs[train].comm
    assert got[("process", str(train), comm)] == pytest.approx(5.0)


def test_in_the_process_tree_scope(gpu_node):
    from carbonmeter import config
    from carbonmeter.attribution import process_tree

    sn, train, serve, _host = gpu_node
    node = sn.node
    child = node.spawn(node.procs[train].cgroup, "worker", ppid=train)
    gpu = FakeGpu(processes={child: 1 << 30, serve: 1 << 30}, sm_util={child: 75, serve: 25})
    fake = FakeNvml([gpu])
    cfg = config.load(env={}, overrides={"paths.procfs": str(node.procfs),
                                         "attribution.idle_watts": {"gpu": 0}})
    a = process_tree(train, cfg, [], nvml=fake)
    node.flush()
    a.account([], INTENSITY, 1.0)
    fake.advance(1)
    got = table(step(a, node, energy={GPU: 100.0}), "gpu")
    assert got[("process", str(train), node.procs[train].comm)] == pytest.approx(75.0)
    assert got[("other", "", "")] == pytest.approx(25.0)
