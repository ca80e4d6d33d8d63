"""CPU time and memory of every process, read from /proc fast enough for 10,000 per interval.

Which file, per process and interval (`python bench/attribution.py` measures them; on a
2-vCPU EPYC a `pread` of a kept fd costs about 4.8 us on /proc/<pid>/stat, 2.0 us on
/proc/<pid>/schedstat, 2.3 us on statm, against 0.7 us for the system call alone):

- /proc/<pid>/stat holds everything the attribution uses (utime+stime, cutime+cstime, ppid,
  rss, start time, threads), but the kernel takes long to write it (52 fields, the mm, every
  thread's times).
- /proc/<pid>/schedstat's first field is the thread group leader's on-CPU time in ns. It is
  there whenever the kernel has CONFIG_SCHED_INFO (selected by TASK_DELAY_ACCT or SCHEDSTATS;
  `kernel.sched_schedstats` is not needed); a kernel without it writes "0 0 0". It moves
  whenever the leader runs at all, so for a single-threaded process an unchanged record means
  its stat fields have not changed either: its times only grow while it runs, it reaps
  children (cutime) and starts threads only by running. So it is read first, and stat only
  when it moved. Its times are the leader's alone, so a process with several threads has its
  stat read every interval.
- What can change in stat while the process sleeps: its RSS, when the kernel reclaims or
  swaps its pages (or khugepaged fills a huge page in), and its ppid, when its parent exits.
  Every process's stat is read at least every `STAT_EVERY` intervals (a different tenth
  each interval), and a process's children are read in the interval it is seen exiting, so
  the time of an orphan later reaped by init is not counted twice.

Files are opened once and kept open (one `pread` per interval instead of open, read,
close). An fd on a /proc/<pid> file belongs to that task: once the task is reaped the read
fails with ESRCH, even when the PID has been given to a new process, so a reused PID is never
mistaken for the old process; the start time (field 22) is compared as well. /proc is
listed from the PID last handed out, for the processes started since (`ProcTable._pids`).
Records are parsed only when their bytes changed.

Times are clock ticks (USER_HZ, 100 on every Linux architecture that matters).
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
STAT_EVERY = 10  # intervals: the longest a sleeping process's RSS may be stale
TGID_OFFSET = 258  # fs/proc/base.c: /proc's directory offset of PID n is n + TGID_OFFSET
_FD_RESERVE = 256  # descriptors left for sockets, probes and the rest of the exporter
_RDONLY = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


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


def _fields(data: bytes) -> tuple[bytes, int, int, int, int, int, int, bool]:
    """(comm, ppid, utime+stime, cutime+cstime, starttime, rss pages, threads, exiting).

    `comm` is in parentheses and may itself hold spaces and parentheses ("(sd-pam)",
    "my (x) y"), so the fields are counted from the LAST ')'.
    """
    close = data.rindex(b")")
    f = data[close + 2:].split(b" ", 22)
    # after ')': state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17) ...
    # num_threads(20) starttime(22) vsize(23) rss(24): index = field number - 3
    return (data[data.index(b"(") + 1:close], int(f[1]), int(f[11]) + int(f[12]),
            int(f[13]) + int(f[14]), int(f[19]), int(f[21]), int(f[17]), f[0] in (b"Z", b"X"))


def parse_stat(data: bytes) -> tuple[bytes, int, int, int, int, int]:
    """(comm, ppid, utime+stime, cutime+cstime, starttime, rss pages) of one stat record."""
    return _fields(data)[:6]


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
    sfd: int = -1  # /proc/<pid>/schedstat, kept open where it tells when the process ran
    ran: bytes = b""  # its record when stat was last read
    threads: int = 1
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
        self._tick = 0
        self._exiting: list[int] = []
        self.listed = True  # the last refresh listed all of /proc (see _pids)
        self._since: int | None = None  # the PID last handed out at the last refresh
        self._dir = -1  # /proc, opened to list it from an offset
        self._offsets_checked = False
        self._loadavg = -1  # its fd; -2: no last PID to be had
        self._n = 0  # processes listed at the last full listing
        self._sfds = 0  # schedstat fds kept
        self._sched_ok = True  # the kernel writes schedstat
        self.stat_reads = 0  # stat records read in the last refresh (the costly part)

    def refresh(self) -> tuple[list[Proc], list[Proc], list[Proc]]:
        """Re-read every process: (started, changed, ended) since the last refresh.

        `started` are processes new to the table (a reused PID ends the old process and
        starts a new one); `changed` are known processes whose record changed; `ended` are the
        ones gone, with their last known values. A process listed but unreadable this time
        (it is exiting) keeps its last values.
        """
        self._tick = tick = self._tick + 1
        procs = self.procs
        seen: dict[int, Proc] = {}
        out: tuple[list[Proc], list[Proc], list[Proc]] = ([], [], [])
        self._exiting = exiting = []  # their children were handed to another parent
        pread, update = os.pread, self._update
        self.stat_reads = 0
        pids, listed = self._pids(tick)
        for pid in pids:
            p = procs.pop(pid, None)
            ran = b""
            if p is not None and p.sfd >= 0 and p.threads == 1 and (pid + tick) % STAT_EVERY:
                try:
                    ran = pread(p.sfd, 128, 0)
                except OSError:  # ESRCH: that task is gone, whoever holds the PID now
                    self._close(p)
                if ran == p.ran:  # it has not run since its stat was read
                    seen[pid] = p
                    continue
            q = update(pid, p, ran, out)
            if q is not None:
                seen[pid] = q
            elif p is not None and not listed:  # gone, as the listing would have said
                self._close(p)
                out[2].append(p)
                exiting.append(pid)
        for p in procs.values():  # no longer listed
            self._close(p)
            out[2].append(p)
            exiting.append(p.pid)
        if exiting:
            self._orphans(set(exiting), seen, out)
        self.procs = seen
        return out

    def _pids(self, tick: int) -> tuple[list[int], bool]:
        """The PIDs to read: (pids, whether they are all that /proc lists).

        Listing /proc costs the kernel about 1 us a process. PIDs are handed out in
        increasing order until they wrap around at pid_max, and /proc lists them in order
        from any offset (a directory offset is the PID plus TGID_OFFSET), so the processes
        started since the last refresh are those listed from the PID last handed out then
        (/proc/loadavg's last field) on: the known ones are read through their fds, whose
        reads fail once a process is gone. All of /proc is listed on the first refresh,
        after a wrap, every `STAT_EVERY` intervals, and always where the offsets or the last
        PID cannot be trusted: /proc of another PID namespace than this process's
        (loadavg's last PID is this process's namespace's), a tree that is not procfs.
        """
        last = self._last_pid()
        since, self._since = self._since, last
        self.listed = True
        if since is not None and last is not None and since <= last and tick % STAT_EVERY:
            try:
                os.lseek(self._dir, since + 1 + TGID_OFFSET, os.SEEK_SET)
                new = os.listdir(self._dir)
            except OSError:
                new = None
            if new is not None:
                self.listed = False
                procs = self.procs
                pids = list(procs)
                pids += [pid for pid in map(int, filter(str.isdigit, new)) if pid not in procs]
                return pids, False
        try:
            names = os.listdir(self.procfs)
        except OSError:
            return [], True
        pids = [int(n) for n in names if n.isdigit()]
        self._n = len(pids)
        if self._dir < 0 and last is not None and not self._offsets_checked:
            self._offsets_checked = True
            self._dir = self._check_offsets(pids)
            if self._dir < 0:
                self._since = None
        return pids, True

    def _last_pid(self) -> int | None:
        """The PID last handed out, where /proc is this process's own namespace's."""
        if self._loadavg == -2:
            return None
        if self._loadavg == -1:
            try:
                if os.readlink(f"{self.procfs}/self") != str(os.getpid()):
                    raise OSError("another PID namespace")
                self._loadavg = os.open(f"{self.procfs}/loadavg", _RDONLY)
            except OSError:
                self._loadavg = -2
                return None
        try:
            return int(os.pread(self._loadavg, 128, 0).rsplit(b" ", 1)[1])
        except (OSError, ValueError, IndexError):
            return None

    def _check_offsets(self, pids: list[int]) -> int:
        """A directory fd on /proc if listing it from PID + TGID_OFFSET starts at that PID
        (and from one more, after it), else -1."""
        if not pids:
            return -1
        pid = min(pids)
        try:
            fd = os.open(self.procfs, _RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return -1
        try:
            os.lseek(fd, pid + TGID_OFFSET, os.SEEK_SET)
            at = [n for n in os.listdir(fd) if n.isdigit()][:1]
            os.lseek(fd, pid + 1 + TGID_OFFSET, os.SEEK_SET)
            after = [n for n in os.listdir(fd) if n.isdigit()][:1]
        except OSError:
            at = after = []
        if at == [str(pid)] and after != at:
            return fd
        os.close(fd)
        return -1

    def _update(self, pid: int, p: Proc | None, ran: bytes,
                out: tuple[list[Proc], list[Proc], list[Proc]]) -> Proc | None:
        """Read one process's stat: the process now at `pid` (None: unreadable, new), filed
        under started, changed or ended in `out`. `ran` is its schedstat record read just
        before (empty: not read)."""
        self.stat_reads += 1
        data = b""
        if p is not None and p.fd >= 0:
            try:
                data = os.pread(p.fd, 1024, 0)
            except OSError:  # ESRCH: that task is gone
                self._close(p)
        if not data:
            name = str(pid)
            if p is None:  # a new process: schedstat first, as its baseline
                ran, sfd = self._schedstat(name)
            # stat fds come out of what is left once every process has a schedstat one
            spare = self._budget - (self._n - self._sfds if self._sched_ok else 0)
            data, fd = self._read(f"{self.procfs}/{name}/stat", keep=self._open < spare)
            if not data:
                if p is None:
                    self._drop_sched(sfd)
                    return None
                p.fd = fd
                return p if self.listed else None
            if p is None:
                p = Proc(pid, -1, b"", 0, 0, 0, 0, fd=fd, sfd=sfd)
                p.ran = ran
                return self._start(p, data, out)
            p.fd = fd
        assert p is not None
        digest = hash(data)
        if digest == p.raw:
            if ran:
                p.ran = ran
            return p
        try:
            _comm, ppid, cpu, children, start, rss, threads, exiting = _fields(data)
        except (ValueError, IndexError):  # a record caught half-written: keep the last
            return p
        if p.start == start:
            p.ppid, p.cpu, p.children, p.rss, p.raw = ppid, cpu, children, rss, digest
            p.threads = threads
            if ran:
                p.ran = ran
            out[1].append(p)
            if exiting:
                self._exiting.append(pid)
            return p
        # the PID was reused: the old process ended (its fds, if any, are the new one's)
        q = Proc(pid, -1, b"", 0, 0, 0, 0, fd=p.fd, sfd=p.sfd)
        q.ran = ran
        p.fd = p.sfd = -1
        out[2].append(p)
        if q.sfd < 0:  # after its stat: a run in between shows at the next change
            q.ran, q.sfd = self._schedstat(str(pid))
        return self._start(q, data, out)

    def _start(self, p: Proc, data: bytes, out: tuple[list[Proc], ...]) -> Proc | None:
        try:
            comm, ppid, cpu, children, start, rss, threads, _ = _fields(data)
        except (ValueError, IndexError):
            self._close(p)
            return None
        p.start, p.comm, p.ppid, p.cpu, p.children, p.rss = start, comm, ppid, cpu, children, rss
        p.threads, p.raw = threads, hash(data)
        out[0].append(p)
        return p

    def _orphans(self, parents: set[int], seen: dict[int, Proc],
                 out: tuple[list[Proc], list[Proc], list[Proc]]) -> None:
        """Read again the children of processes that exited, which their schedstat does not
        show: their new ppid (init, a subreaper) is who will reap them."""
        fresh = {id(p) for p in out[0]} | {id(p) for p in out[1]}
        for pid, p in list(seen.items()):
            if p.ppid in parents and id(p) not in fresh:
                q = self._update(pid, p, b"", out)
                if q is None:  # gone meanwhile
                    self._close(p)
                    out[2].append(p)
                    del seen[pid]
                else:
                    seen[pid] = q

    def _read(self, path: str, *, keep: bool) -> tuple[bytes, int]:
        """(record, fd kept or -1) of a file opened afresh."""
        try:
            fd = os.open(path, _RDONLY)
        except OSError:
            return b"", -1
        try:
            data = os.pread(fd, 1024, 0)
        except OSError:
            data = b""
        if keep and data and self._open < self._budget:
            self._open += 1
            return data, fd
        os.close(fd)
        return data, -1

    def _schedstat(self, name: str) -> tuple[bytes, int]:
        """(record, fd kept or -1) of a new process's schedstat."""
        ran, sfd = self._read(f"{self.procfs}/{name}/schedstat", keep=self._sched_ok)
        if not ran or ran == b"0 0 0\n":  # a kernel without CONFIG_SCHED_INFO
            self._sched_ok = False
        if sfd >= 0:
            if ran.startswith(b"0 "):  # no on-CPU time kept for it: its stat every time
                sfd = self._drop(sfd)
            else:
                self._sfds += 1
        return ran, sfd

    def _drop(self, fd: int) -> int:
        if fd >= 0:
            os.close(fd)
            self._open -= 1
        return -1

    def _drop_sched(self, sfd: int) -> int:
        if sfd >= 0:
            self._sfds -= 1
        return self._drop(sfd)

    def _close(self, p: Proc) -> None:
        p.fd = self._drop(p.fd)
        p.sfd = self._drop_sched(p.sfd)

    def cgroup_of(self, pid: int) -> bytes:
        return cgroup_of(self.procfs, pid)

    def close(self) -> None:
        for p in self.procs.values():
            self._close(p)
        self._open = self._sfds = 0
        for fd in (self._dir, self._loadavg):
            if fd >= 0:
                os.close(fd)
        self._dir = self._loadavg = -1
        self._since = None
        self._offsets_checked = False


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
