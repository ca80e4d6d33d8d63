"""cgroup layouts: v1, v2 and the hybrid of both; the paths of each runtime and driver."""

from __future__ import annotations

import os

import pytest

from carbonmeter.attribution import cgroups
from tests.fixtures.node import FakeNode

UID = "0c3a1f5e-8d2b-4c6f-9a1e-2b3c4d5e6f70"
CID = "4f9c2b7a1e3d5c6b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b"


@pytest.mark.parametrize(("path", "kind", "uid", "cid", "runtime", "unit"), [
    # containerd, systemd driver
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
     f"{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope", "container", UID, CID,
     "containerd", ""),
    # Guaranteed pod, directly in kubepods.slice
    (f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope",
     "container", UID, CID, "containerd", ""),
    # CRI-O and its conmon (the pod's, not a container)
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
     f"{UID.replace('-', '_')}.slice/crio-{CID}.scope", "container", UID, CID, "cri-o", ""),
    (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"
     f"{UID.replace('-', '_')}.slice/crio-conmon-{CID}.scope", "pod", UID, "", "", ""),
    # cgroupfs driver
    (f"/kubepods/burstable/pod{UID}/{CID}", "container", UID, CID, "", ""),
    (f"/kubepods/pod{UID}/{CID}", "container", UID, CID, "", ""),
    # Docker without Kubernetes, both drivers; Podman
    (f"/system.slice/docker-{CID}.scope", "container", "", CID, "docker", ""),
    (f"/docker/{CID}", "container", "", CID, "", ""),
    (f"/machine.slice/libpod-{CID}.scope", "container", "", CID, "podman", ""),
    # systemd services, nested slices too; anything else is the host's
    ("/system.slice/ssh.service", "service", "", "", "", "ssh.service"),
    ("/system.slice/system-getty.slice/getty@tty1.service", "service", "", "", "",
     "getty@tty1.service"),
    ("/user.slice/user-1000.slice/session-3.scope", "", "", "", "", ""),
    ("/", "", "", "", "", ""),
])
def test_classify_paths_of_every_runtime_and_driver(path, kind, uid, cid, runtime, unit):
    cg = cgroups.classify_path(path)
    assert (cg.kind, cg.pod_uid, cg.container_id, cg.runtime, cg.unit) == (
        kind, uid, cid, runtime, unit)


def test_proc_cgroup_lines_v1_v2_hybrid():
    assert cgroups.cgroup_path(b"0::/system.slice/ssh.service\n", 2) == \
        "/system.slice/ssh.service"
    v1 = b"12:pids:/a\n4:cpu,cpuacct:/kubepods/x\n1:name=systemd:/b\n0::/c\n"
    assert cgroups.cgroup_path(v1, 1) == "/kubepods/x"
    assert cgroups.cgroup_path(v1, 2) == "/c"
    assert cgroups.cgroup_path(b"", 2) is None


@pytest.mark.parametrize(("layout", "version", "where"), [
    ("v2", 2, "cgroup"), ("v1", 1, "cpu,cpuacct"), ("hybrid", 1, "cpu,cpuacct")])
def test_detect_layouts(tmp_path, layout, version, where):
    node = FakeNode(tmp_path, layout=layout)
    found = cgroups.detect(str(node.cgroupfs))
    assert found.version == version
    assert os.path.basename(os.path.realpath(found.cpu_root)) == where


def test_detect_this_machine_and_nothing(tmp_path):
    # this development machine is hybrid: v1 controllers, an empty cgroup2 at unified/
    here = cgroups.detect("/sys/fs/cgroup")
    assert here.version in (1, 2)
    with pytest.raises(cgroups.CgroupsUnavailable, match="no cgroup hierarchy with CPU"):
        cgroups.detect(str(tmp_path))


@pytest.mark.parametrize("layout", ["v2", "v1"])
@pytest.mark.parametrize("driver", ["systemd", "cgroupfs"])
def test_walk_reads_pods_containers_and_services(tmp_path, layout, driver):
    node = FakeNode(tmp_path, layout=layout, driver=driver)
    pod = node.add_pod("web", qos="burstable", cpu_millis=1500)
    rel = node.add_container(pod, "app", cpu_millis=1000)
    node.mkdir("system.slice/ssh.service")
    node.mkdir("user.slice/user-1000.slice/session-2.scope")
    pid = node.spawn(rel, "app")
    node.run(pid, 1.25)
    node.set_memory(rel, 300 << 20)
    node.flush()
    lay = cgroups.detect(str(node.cgroupfs))
    found = {c.rel: c for c in cgroups.walk(lay.cpu_root, containers=True)}
    kinds = sorted(c.kind for c in found.values())
    assert kinds.count("pod") == 1 and kinds.count("container") == 2  # app + the sandbox
    assert kinds.count("service") == 1 and "user.slice/user-1000.slice/session-2.scope" \
        not in found
    assert found[rel].parent == pod.rel and found[rel].pod_uid == pod.uid
    pods_only = cgroups.walk(lay.cpu_root, containers=False)
    assert [c.kind for c in pods_only if c.kind] == ["pod"]
    reader = cgroups.Reader(lay, budget=100)
    assert reader.cpu_seconds(rel) == pytest.approx(1.25)
    assert reader.cpu_seconds(pod.rel) == pytest.approx(1.25)  # hierarchical
    assert reader.memory_bytes(rel) == 300 << 20
    # the kubelet's shares (v1) or weight (v2) back to CPUs; v2's integer weight rounds
    assert reader.requested_cpus(rel) == pytest.approx(1.0, rel=0.03)
    assert reader.requested_cpus(pod.rel) == pytest.approx(1.5, rel=0.03)
    reader.close()
