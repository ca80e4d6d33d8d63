"""CPU time and memory of every process, read from /proc fast enough for 10,000 per interval.

Each process's `stat` file is opened once and kept open; later intervals `pread` it, one system
call instead of three. An fd on /proc/<pid>/stat belongs to that task: once the task is reaped
the read fails with ESRCH, even when the PID has been given to a new process, so a reused PID is
never mistaken for the old process; the start time (field 22) is compared as well. The directory
listing of /proc decides which PIDs exist. Records are parsed only when their bytes changed:
most processes sleep through most intervals.

Times are clock ticks (USER_HZ, 100 on every Linux architecture that matters).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_FD_RESERVE = 256  # descriptors left for sockets, probes and the rest of the exporter


def fd_budget() -> int:
    """How many files may be kept open: raises the soft limit to the hard one, once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        soft = hard
    return max(0, soft - _FD_RESERVE)


def cgroup_of(procfs: str, pid: int) -> bytes:
    """/proc/<pid>/cgroup: read once per process, or for the few asked about (GPU users)."""
    try:
        with open(f"{procfs}/{pid}/cgroup", "rb") as f:
            return f.read()
    except OSError:
        return b""


def parse_stat(data: bytes) -> tuple[bytes, int, int, int, int, int]:
    """(comm, ppid, utime+stime, cutime+cstime, starttime, rss pages) of one stat record.

    `comm` is in parentheses and may itself hold spaces and parentheses ("(sd-pam)",
    "my (x) y"), so the fields are counted from the LAST ')'.
    """
    close = data.rindex(b")")
    f = data[close + 2:].split(b" ", 22)
    # after ')': state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17) ...
    # starttime(22) vsize(23) rss(24): index = field number - 3
    return (data[data.index(b"(") + 1:close], int(f[1]), int(f[11]) + int(f[12]),
            int(f[13]) + int(f[14]), int(f[19]), int(f[21]))


@dataclass(slots=True)
class Proc:
    """What the table knows of one live process; updated in place, interval after interval."""

    pid: int
    start: int  # starttime in ticks since boot: with pid, the process's identity
    comm: bytes
    ppid: int
    cpu: int  # utime + stime, ticks
    children: int  # cutime + cstime: CPU of reaped children, ticks
    rss: int  # pages
    raw: int = 0  # hash of the last stat record, to skip parsing when nothing changed
    fd: int = -1
    # kept by the attribution: values already accounted, and who the process is to it
    last_cpu: int = 0
    last_children: int = 0
    key: tuple = ()
    ident: object = None


class ProcTable:
    """Every process under `procfs`, re-read by `refresh()`."""

    def __init__(self, procfs: str, *, fd_budget: int | None = None) -> None:
        self.procfs = str(procfs)
        self.procs: dict[int, Proc] = {}
        self._budget = fd_budget if fd_budget is not None else 0
        self._open = 0

    def refresh(self) -> tuple[list[Proc], list[Proc], list[Proc]]:
        """Re-read every process: (started, changed, ended) since the last refresh.

        `started` are processes new to the table (a reused PID ends the old process and
        starts a new one); `changed` are known processes whose record changed; `ended` are the
        ones gone, with their last known values. A process listed but unreadable this time
        (it is exiting) keeps its last values.
        """
        procs = self.procs
        seen: dict[int, Proc] = {}
        started: list[Proc] = []
        changed: list[Proc] = []
        ended: list[Proc] = []
        pread, close = os.pread, os.close
        try:
            names = os.listdir(self.procfs)
        except OSError:
            names = []
        for name in names:
            if not name.isdigit():
                continue
            pid = int(name)
            p = procs.pop(pid, None)
            fd = p.fd if p is not None else -1
            data = b""
            if fd >= 0:
                try:
                    data = pread(fd, 1024, 0)
                except OSError:  # ESRCH: that task is gone, whoever holds the PID now
                    close(fd)
                    fd = -1
                    self._open -= 1
            if not data:
                data, fd = self._reopen(name, fd)
            if not data:
                if p is not None:
                    p.fd = fd
                    seen[pid] = p
                continue
            digest = hash(data)
            if p is not None and digest == p.raw:
                p.fd = fd
                seen[pid] = p
                continue
            try:
                comm, ppid, cpu, children, start, rss = parse_stat(data)
            except (ValueError, IndexError):  # a record caught half-written: keep the last
                if p is not None:
                    p.fd = fd
                    seen[pid] = p
                elif fd >= 0:
                    close(fd)
                    self._open -= 1
                continue
            if p is not None and p.start == start:
                p.ppid, p.cpu, p.children, p.rss, p.raw = ppid, cpu, children, rss, digest
                p.fd = fd
                seen[pid] = p
                changed.append(p)
                continue
            if p is not None:  # the PID was reused: the old process ended
                p.fd = -1
                ended.append(p)
            q = Proc(pid, start, comm, ppid, cpu, children, rss, digest, fd)
            seen[pid] = q
            started.append(q)
        for p in procs.values():  # no longer listed
            if p.fd >= 0:
                close(p.fd)
                p.fd = -1
                self._open -= 1
            ended.append(p)
        self.procs = seen
        return started, changed, ended

    def _reopen(self, name: str, old_fd: int) -> tuple[bytes, int]:
        """Open /proc/<pid>/stat afresh: (record, fd kept or -1)."""
        try:
            fd = os.open(f"{self.procfs}/{name}/stat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b"", old_fd
        try:
            data = os.pread(fd, 1024, 0)
        except OSError:
            data = b""
        if old_fd >= 0:
            os.close(old_fd)
            self._open -= 1
        if data and self._open < self._budget:
            self._open += 1
            return data, fd
        os.close(fd)
        return data, -1

    def cgroup_of(self, pid: int) -> bytes:
        return cgroup_of(self.procfs, pid)

    def close(self) -> None:
        for p in self.procs.values():
            if p.fd >= 0:
                os.close(p.fd)
                p.fd = -1
        self._open = 0


@dataclass(frozen=True, slots=True)
class NodeStat:
    busy_s: float  # CPU seconds spent running anything: user, nice, system, irq, softirq
    ncpu: int
    mem_total: int  # bytes
    mem_free: int


class NodeReader:
    """The node's busy CPU time and memory, from /proc/stat and /proc/meminfo."""

    def __init__(self, procfs: str) -> None:
        self.procfs = str(procfs)

    def read(self) -> NodeStat:
        with open(f"{self.procfs}/stat", "rb") as f:
            stat = f.read()
        ncpu = 0
        busy = -1
        for line in stat.split(b"\n"):
            if line.startswith(b"cpu "):
                # user nice system idle iowait irq softirq steal: guest is inside user, and
                # steal is time the hypervisor gave to others
                v = [int(x) for x in line.split()[1:8]]
                busy = v[0] + v[1] + v[2] + v[5] + v[6]
            elif line.startswith(b"cpu"):
                ncpu += 1
        if busy < 0:
            raise ValueError(f"no cpu line in {self.procfs}/stat")
        total = free = 0
        with open(f"{self.procfs}/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    total = int(line.split()[1]) * 1024
                elif line.startswith(b"MemFree:"):
                    free = int(line.split()[1]) * 1024
                    break
        return NodeStat(busy / CLK_TCK, max(1, ncpu), total, free)
