"""What each workload used over an interval, read at the level asked: pods or containers from
cgroups, processes from /proc, or the process tree of one command.

Time that the readings cannot place goes to the `host` row, never lost from the totals:

- a cgroup removed between two samples (a container or pod that stopped): the kernel keeps
  its CPU time in the parent cgroup, so the parent's time that its present children do not
  explain is given to the children that vanished, in proportion to their last interval; its
  memory is freed and needs no share;
- a process that exited between two samples: its time since the last sample is in its
  parent's cutime/cstime once the parent has waited for it, and is credited to the parent's row;
  a process reaped by someone else (orphans reaped by init) loses that last part to `host`,
  as does the whole of a process that lived between two samples and was reaped by init;
- interrupts and everything outside any workload go to `host`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from carbonmeter.attribution import cgroups
from carbonmeter.attribution.model import Key, WorkloadUsage
from carbonmeter.attribution.procfs import (
    CLK_TCK,
    PAGE_SIZE,
    NodeReader,
    NodeStat,
    Proc,
    ProcTable,
    cgroup_of,
)
from carbonmeter.attribution.view import Identity

if TYPE_CHECKING:  # the kubelet client (urllib, ssl: about 20 ms) loads only at pod level
    from carbonmeter.attribution.kubernetes import Names


@dataclass(slots=True)
class Interval:
    usage: WorkloadUsage
    present: dict[Key, Identity]
    key_of_pid: Callable[[int], Key | None] = field(default=lambda _pid: None)


class CgroupSource:
    """Pods (level "pod") or containers, services and pods' own time (level "container")."""

    def __init__(self, level: str, layout: cgroups.Layout, procfs: str, names: Names,
                 budget: int) -> None:
        self.level = level
        self.names = names
        self.layout = layout
        self.reader = cgroups.Reader(layout, budget)
        self.walker = cgroups.Walker(layout.cpu_root, containers=level == "container")
        self.node = NodeReader(procfs)
        self.procfs = procfs
        self.method = (f"CPU time from cgroup v{layout.version} "
                       f"{'cpu.stat usage_usec' if layout.version == 2 else 'cpuacct.usage'}"
                       f" per {level}, node busy time from /proc/stat")
        self._prev: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._groups: dict[str, cgroups.Cgroup] = {}
        self._keys: dict[str, Key] = {}
        self._requests: dict[str, float] = {}
        self._known: dict[str, tuple[Key, Identity]] = {}  # rel -> its workload, once named
        self._busy: float | None = None

    def sample(self) -> Interval | None:
        node = self.node.read()
        found = self.walker.walk()
        now: dict[str, float] = {}
        groups: dict[str, cgroups.Cgroup] = {}
        for cg in found:
            v = self.reader.cpu_seconds(cg.rel)
            if v is None:  # listed but unreadable for now: no time spent, not gone
                v = self._prev.get(cg.rel)
            if v is not None:
                now[cg.rel] = v
                groups[cg.rel] = cg
        first = self._busy is None
        busy = node.busy_s - (self._busy or 0.0)
        self._busy = node.busy_s
        prev, old_groups, old_keys = self._prev, self._groups, self._keys
        for rel in old_groups.keys() - groups.keys():
            self.reader.forget(rel)
            self._requests.pop(rel, None)
            self._known.pop(rel, None)
        keys: dict[str, Key] = {}
        present: dict[Key, Identity] = {}
        known = self._known
        for rel, cg in groups.items():
            ki = known.get(rel)
            if ki is None:
                ki = self._key(cg)
                if ki is None:
                    continue
                if ki[1].labels is not None and (ki[0][0] != "pod" or cg.kind == "pod"):
                    known[rel] = ki  # named for good (a sandbox may yet be named a container)
            keys[rel] = ki[0]
            present[ki[0]] = ki[1]
        self.names.end_interval()
        self._prev, self._groups, self._keys = now, groups, keys
        if first:
            self._last = {}
            return None

        delta: dict[str, float] = {}
        for rel, v in now.items():
            p = prev.get(rel)
            delta[rel] = v if p is None or v < p else v - p  # new, or made again: all of it
        below: dict[str, float] = defaultdict(float)
        for rel, d in delta.items():
            parent = groups[rel].parent
            if parent is not None:
                below[parent] += d
        vanished: dict[str, list[str]] = defaultdict(list)
        for rel, cg in old_groups.items():
            if rel not in groups and cg.parent in groups and rel in old_keys:
                vanished[cg.parent].append(rel)

        usage = WorkloadUsage(node_cpu=busy, mem_total=node.mem_total, mem_free=node.mem_free,
                      ncpu=node.ncpu)
        cpu = usage.cpu
        for rel, d in delta.items():
            own = max(0.0, d - below.get(rel, 0.0))
            gone = vanished.get(rel)
            if gone:  # the parent's unexplained time is the last of its vanished children
                last = [self._last.get(g, 0.0) for g in gone]
                total = math.fsum(last)
                for g, x in zip(gone, last, strict=True):
                    k = old_keys[g]
                    cpu[k] = cpu.get(k, 0.0) + own * (x / total if total > 0 else 1 / len(gone))
            elif rel in keys:
                k = keys[rel]
                cpu[k] = cpu.get(k, 0.0) + own
        self._last = delta

        mem = usage.memory
        pods_mem: dict[Key, float] = defaultdict(float)  # the pods' own rows (container level)
        for rel, k in keys.items():
            cg = groups[rel]
            own_row = k[0] == "pod" and self.level == "container"
            if own_row and cg.kind != "pod":
                continue  # a sandbox: inside its pod's memory, requests nothing
            m = self.reader.memory_bytes(rel)
            if m is not None:
                if own_row:
                    pods_mem[k] += m
                else:
                    mem[k] = mem.get(k, 0.0) + m
                    if cg.pod_uid:
                        pods_mem[("pod", cg.pod_uid)] -= m
            if cg.pod_uid and not own_row:
                r = self._requests.get(rel)
                if r is None:
                    r = self._requests[rel] = self.reader.requested_cpus(rel)
                if r > 0:
                    usage.requests[k] = usage.requests.get(k, 0.0) + r
        for k, m in pods_mem.items():
            if k in present and m > 0:
                mem[k] = m
        usage.members = [k for k, ident in present.items()
                         if ident.workload in ("pod", "container") and (
                             self.level == "pod" or k[0] == "container")]
        return Interval(usage, present, self._pid_key)

    def _key(self, cg: cgroups.Cgroup) -> tuple[Key, Identity] | None:
        """The workload a cgroup's time goes to at this level, and its identity."""
        if cg.kind == "pod" or (self.level == "pod" and cg.pod_uid):
            return self._pod_key(cg.pod_uid)
        if self.level != "container" or cg.kind == "":
            return None
        if cg.kind == "service":
            return ("service", cg.unit), Identity("service", ("", "", cg.unit),
                                                  (("carbonmeter.systemd.unit", cg.unit),))
        if not cg.pod_uid:  # a container outside Kubernetes (Docker, Podman)
            short = cg.container_id[:12]
            return ("container", "", cg.container_id), Identity(
                "container", ("", "", short),
                (("container.id", cg.container_id), ("container.runtime", cg.runtime)))
        name = self.names.container(cg.pod_uid, cg.container_id)
        if name == "":  # not one of the pod's containers: its sandbox, the pod's own time
            return self._pod_key(cg.pod_uid)
        pod = self.names.pod(cg.pod_uid)
        attrs = (("k8s.pod.uid", cg.pod_uid), ("container.id", cg.container_id),
                 ("container.runtime", cg.runtime))
        if name is None or pod is None:
            return ("container", cg.pod_uid, cg.container_id), Identity("container", None,
                                                                       attrs)
        return ("container", cg.pod_uid, name), Identity("container", (*pod, name), attrs)

    def _pod_key(self, uid: str) -> tuple[Key, Identity]:
        pod = self.names.pod(uid)
        attrs: tuple[tuple[str, str], ...] = (("k8s.pod.uid", uid),)
        if pod is None:
            return ("pod", uid), Identity("pod", None, attrs)
        labels = pod if self.level == "pod" else (*pod, "")
        return ("pod", uid), Identity("pod", labels, attrs)

    def _pid_key(self, pid: int) -> Key | None:
        path = cgroups.cgroup_path(cgroup_of(self.procfs, pid), self.layout.version)
        if path is None:
            return None
        ki = self._key(cgroups.classify_path(path))
        return None if ki is None else ki[0]

    def close(self) -> None:
        self.reader.close()
        self.names.close()


class ProcessSource:
    """Every process: its CPU time, plus that of the children it reaped during the interval."""

    level = "process"

    def __init__(self, procfs: str, budget: int, *, only_pod: str | None = None,
                 cgroup_version: int = 2) -> None:
        self.table = ProcTable(procfs, fd_budget=budget)
        self.node = NodeReader(procfs)
        self.only_pod = only_pod
        self.cgroup_version = cgroup_version
        self.method = ("CPU time from /proc/<pid>/stat utime+stime (+ reaped children's "
                       "cutime+cstime), node busy time from /proc/stat")
        self._busy: float | None = None

    def _deltas(self) -> tuple[list[tuple[Proc, int, int]], bool, float, NodeStat]:
        """(process, own CPU ticks, ticks of children it reaped) for every process that used
        some this interval; whether this was the first (baseline) read; the node's busy
        seconds and its stats."""
        node = self.node.read()
        started, changed, ended = self.table.refresh()
        first = self._busy is None
        busy = node.busy_s - (self._busy or 0.0)
        self._busy = node.busy_s
        reaped: dict[int, int] = defaultdict(int)
        for p in ended:  # what the parent's cutime+cstime gains that was counted already
            reaped[p.ppid] += p.last_cpu + p.last_children
        out: list[tuple[Proc, int, int]] = []
        for p in started:
            self._identify(p)
            if not first and p.cpu + p.children:
                out.append((p, p.cpu, p.children))  # born in the interval: all of it
            p.last_cpu, p.last_children = p.cpu, p.children
        for p in changed:
            own = p.cpu - p.last_cpu
            gained = p.children - p.last_children
            if gained:
                gained = max(0, gained - reaped.get(p.pid, 0))
            if own > 0 or gained > 0:
                out.append((p, max(0, own), gained))
            p.last_cpu, p.last_children = p.cpu, p.children
        return out, first, busy, node

    def _identify(self, p: Proc) -> None:
        p.key = ("process", p.pid, p.start)
        comm = p.comm.decode(errors="replace")
        ident = Identity("process", (str(p.pid), comm))  # attributes: from the labels
        if self.only_pod is not None and not self._ours(p.pid):
            ident = None  # not ours: its time is the rest of the node's
        p.ident = ident

    def _ours(self, pid: int) -> bool:
        """Is the process in this pod? Its cgroup path names the pod; or the kernel shows the
        path relative to a cgroup namespace ("/", "/../<sibling>"), as it does to a sidecar
        reading its own /proc in a pod that shares its process namespace."""
        path = cgroups.cgroup_path(self.table.cgroup_of(pid), self.cgroup_version)
        if path is None:
            return False
        uid = cgroups.classify_path(path).pod_uid
        return uid == self.only_pod or (not uid and (path == "/" or path.startswith("/..")))

    def sample(self) -> Interval | None:
        deltas, first, busy, node = self._deltas()
        if first:
            return None
        usage = WorkloadUsage(node_cpu=busy, mem_total=node.mem_total, mem_free=node.mem_free,
                      ncpu=node.ncpu)
        cpu = usage.cpu
        for p, own, reaped in deltas:
            if p.ident is not None:
                cpu[p.key] = (own + reaped) / CLK_TCK
        present: dict[Key, Identity] = {}
        mem = usage.memory
        for p in self.table.procs.values():
            if p.ident is not None:
                present[p.key] = p.ident  # type: ignore[assignment]
                if p.rss:
                    mem[p.key] = p.rss * PAGE_SIZE
        usage.members = list(present)
        procs = self.table.procs
        return Interval(usage, present, lambda pid: procs[pid].key if pid in procs and
                        procs[pid].ident is not None else None)

    def close(self) -> None:
        self.table.close()


TREE: Key = ("process", "tree")


class TreeSource(ProcessSource):
    """One command's process tree: the root, every descendant seen, and (when the caller is
    the root's parent) what the caller reaped of it, so the root's last interval counts."""

    def __init__(self, root_pid: int, procfs: str, budget: int, *,
                 reaper_pid: int | None = None) -> None:
        super().__init__(procfs, budget)
        self.root_pid = root_pid
        self.reaper_pid = reaper_pid
        self.method = (f"CPU time of the process tree of pid {root_pid} from /proc/<pid>/stat "
                       "utime+stime+cutime+cstime, node busy time from /proc/stat")
        self.members: set[tuple[int, int]] = set()
        self._root_start: int | None = None  # the root's start time, once seen
        self._ident = Identity("process", (str(root_pid), ""))

    def _identify(self, p: Proc) -> None:
        p.key = ("process", p.pid, p.start)
        p.ident = None

    def sample(self) -> Interval | None:
        deltas, first, busy, node = self._deltas()
        procs = self.table.procs
        children: dict[int, list[Proc]] = defaultdict(list)
        for p in procs.values():
            children[p.ppid].append(p)
        members = {m for m in self.members if m[0] in procs and procs[m[0]].start == m[1]}
        stack = [p for p in procs.values() if (p.pid, p.start) in members]
        root = procs.get(self.root_pid)
        if root is not None and self._root_start is None and first:
            self._root_start = root.start
            stack.append(root)
            comm = root.comm.decode(errors="replace")
            self._ident = Identity("process", (str(self.root_pid), comm))
        while stack:  # descendants, including those re-parented since they were seen
            p = stack.pop()
            members.add((p.pid, p.start))
            stack.extend(c for c in children.get(p.pid, ()) if (c.pid, c.start) not in members)
        self.members = members
        if first:
            return None
        usage = WorkloadUsage(node_cpu=busy, mem_total=node.mem_total, mem_free=node.mem_free,
                      ncpu=node.ncpu)
        ticks = 0
        for p, own, reaped in deltas:
            if (p.pid, p.start) in members:
                ticks += own + reaped
            elif p.pid == self.reaper_pid:  # the caller: only what it reaped of the tree
                ticks += reaped
        if ticks:
            usage.cpu[TREE] = ticks / CLK_TCK
        rss = sum(procs[m[0]].rss for m in members if m[0] in procs)
        if rss:
            usage.memory[TREE] = rss * PAGE_SIZE
        usage.members = [TREE]
        return Interval(usage, {TREE: self._ident},
                        lambda pid: TREE if pid in procs and (pid, procs[pid].start) in members
                        else None)
