"""Control groups: which directories are pods, containers and services, and their CPU time.

Layouts recognised (the cgroup path under the hierarchy's root):

- Kubernetes, systemd driver: ``kubepods.slice/kubepods-burstable.slice/
  kubepods-burstable-pod<uid with _ for ->.slice/<runtime>-<id>.scope`` (Guaranteed pods sit
  directly in ``kubepods.slice`` as ``kubepods-pod<uid>.slice``);
- Kubernetes, cgroupfs driver: ``kubepods/burstable/pod<uid>/<id>``;
- runtimes: containerd ``cri-containerd-<id>.scope``, CRI-O ``crio-<id>.scope`` (its
  ``crio-conmon-<id>.scope`` is pod overhead), Docker ``docker-<id>.scope`` or ``docker/<id>``,
  Podman ``libpod-<id>.scope``;
- systemd services: ``system.slice/<unit>.service`` (also in nested slices).

CPU time is cgroup v2 ``cpu.stat`` ``usage_usec``, or cgroup v1 ``cpuacct.usage`` (ns) from
the cpuacct hierarchy; memory is ``memory.current`` (v2) or ``memory.usage_in_bytes`` (v1),
page cache included; CPU requests come from ``cpu.weight`` (v2) or ``cpu.shares`` (v1), which
the kubelet sets from the pod spec (shares = millicores x 1024 / 1000). A cgroup's counters
include its descendants, and when a cgroup is removed the kernel keeps its time in the parent,
which is how the last interval of a container that stopped is still found (see
`CgroupUsage.sample`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache

_POD_SYSTEMD = re.compile(r"kubepods(?:-besteffort|-burstable|-guaranteed)?-pod([0-9a-f_]{36})"
                          r"\.slice")
_POD_CGROUPFS = re.compile(r"pod([0-9a-f-]{36})")
_CONTAINER = re.compile(r"(?:([a-z-]+?)-)?([0-9a-f]{64})(?:\.scope)?")
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker",
             "libpod": "podman", "cri-dockerd": "docker", "": ""}
# Directories that only hold other cgroups; walked into, read for their totals.
_STRUCTURAL = {"kubepods", "burstable", "besteffort", "guaranteed", "docker", "libpod_parent"}
_DIR_SUFFIXES = (".slice", ".scope", ".service")
_V1_FILES = {"tasks", "notify_on_release", "release_agent"}  # v1's files without a dot


class CgroupsUnavailable(Exception):
    """No readable cgroup hierarchy with CPU accounting; the message says what was looked for."""


@dataclass(frozen=True, slots=True)
class Layout:
    version: int  # 1 or 2
    cpu_root: str  # v2: the unified mount; v1: the cpuacct hierarchy
    memory_root: str | None  # v1 memory hierarchy (v2: cpu_root)
    shares_root: str | None  # v1 cpu hierarchy, for cpu.shares (v2: cpu_root)


def detect(cgroupfs: str) -> Layout:
    """Pure v2 where the root has cgroup.controllers; else the v1 controllers (the hybrid
    layout, whose cgroup2 at ``unified`` holds no controllers); else that ``unified`` tree."""
    if os.path.exists(f"{cgroupfs}/cgroup.controllers"):
        return Layout(2, cgroupfs, cgroupfs, cgroupfs)
    cpuacct = _first(cgroupfs, ("cpuacct", "cpu,cpuacct", "cpuacct,cpu"), "cpuacct.usage")
    if cpuacct is not None:
        return Layout(1, cpuacct, _first(cgroupfs, ("memory",), "memory.usage_in_bytes"),
                      _first(cgroupfs, ("cpu", "cpu,cpuacct", "cpuacct,cpu"), "cpu.shares"))
    unified = f"{cgroupfs}/unified"
    if os.path.exists(f"{unified}/cgroup.controllers"):
        return Layout(2, unified, None, None)
    raise CgroupsUnavailable(
        f"no cgroup hierarchy with CPU accounting under {cgroupfs}: neither cgroup v2 "
        "(cgroup.controllers) nor a v1 cpuacct controller; mount the host's /sys/fs/cgroup "
        "(read-only) and point attribution.cgroupfs at it")


def _first(root: str, names: tuple[str, ...], probe: str) -> str | None:
    for n in names:
        if os.path.exists(f"{root}/{n}/{probe}"):
            return f"{root}/{n}"
    return None


@dataclass(frozen=True, slots=True)
class Cgroup:
    """One cgroup directory the walk read, and what it is."""

    rel: str  # path under the hierarchy root, no leading slash
    parent: str | None  # rel of the nearest cgroup read above it; None at the top
    kind: str  # "pod", "container", "service", or "" for directories that hold others
    pod_uid: str = ""
    container_id: str = ""
    runtime: str = ""
    unit: str = ""


@lru_cache(maxsize=1 << 16)  # names repeat every interval
def pod_uid(name: str) -> str | None:
    """The pod UID in a pod cgroup's directory name (systemd or cgroupfs driver)."""
    m = _POD_SYSTEMD.fullmatch(name)
    if m:
        return m.group(1).replace("_", "-")
    m = _POD_CGROUPFS.fullmatch(name)
    return m.group(1) if m else None


@lru_cache(maxsize=1 << 16)
def container_id(name: str) -> tuple[str, str] | None:
    """(id, runtime) of a container cgroup's directory name; None for anything else
    (a CRI-O ``crio-conmon-<id>.scope`` is the pod's monitor, not a container)."""
    m = _CONTAINER.fullmatch(name)
    if m is None or (m.group(1) or "") not in _RUNTIMES:
        return None
    return m.group(2), _RUNTIMES[m.group(1) or ""]


def classify_path(path: str) -> Cgroup:
    """What a process's cgroup path (from /proc/<pid>/cgroup) belongs to: its pod and
    container, or its service; kind "" when neither."""
    uid = ""
    for part in path.strip("/").split("/"):
        found = pod_uid(part)
        if found:
            uid = found
            continue
        cid = container_id(part)
        if cid:
            return Cgroup(path, None, "container", uid, cid[0], cid[1])
        if part.endswith(".service") and not uid:
            return Cgroup(path, None, "service", unit=part)
    return Cgroup(path, None, "pod" if uid else "", uid)


def cgroup_path(proc_cgroup: bytes, version: int) -> str | None:
    """The path of the hierarchy in use from /proc/<pid>/cgroup: the ``0::`` line on v2, the
    line of the cpuacct controller on v1."""
    for line in proc_cgroup.decode(errors="replace").splitlines():
        num, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if version == 2 and num == "0" and controllers == "":
            return path
        if version == 1 and "cpuacct" in controllers.split(","):
            return path
    return None


class Walker:
    """Finds the cgroups to read, every interval: pods (and with `containers`, their
    containers, other containers and systemd services) with every directory above them.

    Structural directories (``*.slice``, ``kubepods``, QoS classes, ``docker``) are walked
    into; a pod is walked into only for containers; containers and services are leaves (their
    own sub-cgroups count in theirs). A cgroup directory holds some 20 (v1) to 70 (v2) files
    besides its children; their names all have a dot and none ends like a directory's, so a
    name filter finds the children without a stat, and what a path is is worked out once.
    """

    def __init__(self, root: str, *, containers: bool) -> None:
        self.root = root
        self.containers = containers
        self._known: dict[str, Cgroup | None] = {}  # path -> what it is; None: not read

    def walk(self) -> list[Cgroup]:
        out: list[Cgroup] = []
        known = self._known
        seen: dict[str, Cgroup | None] = {}
        stack: list[tuple[str, str]] = [("", "")]  # (rel, uid of the pod it is in)
        while stack:
            rel, in_pod = stack.pop()
            try:
                names = os.listdir(f"{self.root}/{rel}" if rel else self.root)
            except OSError:
                continue
            prefix = f"{rel}/" if rel else ""
            for name in names:
                if ("." in name and not name.endswith(_DIR_SUFFIXES)) or name in _V1_FILES:
                    continue
                child = prefix + name
                if child in known:
                    cg = known[child]
                else:
                    cg = self._classify(name, child, rel or None, in_pod)
                seen[child] = cg
                if cg is None:
                    continue
                out.append(cg)
                if cg.kind == "" or (cg.kind == "pod" and self.containers):
                    stack.append((child, cg.pod_uid))
        self._known = seen
        return out

    def _classify(self, name: str, child: str, parent: str | None,
                  in_pod: str) -> Cgroup | None:
        containers = self.containers
        uid = pod_uid(name)
        if uid and not in_pod:
            return Cgroup(child, parent, "pod", uid)
        if not containers and not child.startswith("kubepods"):
            return None
        cid = container_id(name)
        if cid is not None:
            return Cgroup(child, parent, "container", in_pod, cid[0], cid[1]) if containers \
                else None
        if in_pod:
            return None  # conmon, a sandbox of another runtime: the pod's own time
        if name.endswith(".service"):
            return Cgroup(child, parent, "service", unit=name) if containers else None
        if name.endswith(".slice") or name in _STRUCTURAL:
            return Cgroup(child, parent, "")
        return None


def walk(root: str, *, containers: bool) -> list[Cgroup]:
    """One walk (see Walker)."""
    return Walker(root, containers=containers).walk()


class Reader:
    """CPU time, memory and CPU weight of cgroups, with their files kept open."""

    def __init__(self, layout: Layout, budget: int) -> None:
        self.layout = layout
        self._budget = budget
        v2 = layout.version == 2
        self._cpu = ({}, layout.cpu_root, "cpu.stat" if v2 else "cpuacct.usage")
        self._cpu_scale = 1e-6 if v2 else 1e-9
        self._mem = ({}, layout.memory_root, "memory.current" if v2 else "memory.usage_in_bytes")
        self._shares_root = layout.shares_root
        self._shares_file = "cpu.weight" if v2 else "cpu.shares"

    def cpu_seconds(self, rel: str) -> float | None:
        data = self._read(self._cpu, rel)
        if not data:
            return None
        try:
            # v2: "usage_usec N\n..." on the first line; v1: "N\n"
            return int(data.split(b"\n", 1)[0].split()[-1]) * self._cpu_scale
        except (ValueError, IndexError):
            return None

    def memory_bytes(self, rel: str) -> int | None:
        if self._mem[1] is None:
            return None
        data = self._read(self._mem, rel)
        try:
            return int(data) if data else None
        except ValueError:
            return None

    def requested_cpus(self, rel: str) -> float:
        """CPUs requested, from the weight the kubelet derived from them; read once."""
        if self._shares_root is None:
            return 0.0
        try:
            with open(f"{self._shares_root}/{rel}/{self._shares_file}", "rb") as f:
                value = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        if self.layout.version == 2:  # the kubelet's weight = 1 + (shares - 2) x 9999 / 262142
            value = 2 + (value - 1) * 262142 / 9999
        return 0.0 if value <= 2 else value / 1024

    def forget(self, rel: str) -> None:
        """Close the files of a cgroup that is gone."""
        for fds, _, _ in (self._cpu, self._mem):
            fd = fds.pop(rel, None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        for fds, _, _ in (self._cpu, self._mem):
            for fd in fds.values():
                os.close(fd)
            fds.clear()

    def _read(self, which: tuple[dict[str, int], str | None, str], rel: str) -> bytes:
        fds, root, name = which
        fd = fds.get(rel)
        if fd is not None:
            try:
                data = os.pread(fd, 256, 0)
                if data:
                    return data
            except OSError:  # ENODEV: removed and made again (a restarted service)
                pass
            os.close(fd)
            del fds[rel]
        try:
            fd = os.open(f"{root}/{rel}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b""
        try:
            data = os.pread(fd, 256, 0)
        except OSError:
            data = b""
        if data and len(self._cpu[0]) + len(self._mem[0]) < self._budget:
            fds[rel] = fd
        else:
            os.close(fd)
        return data
