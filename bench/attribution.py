"""What attribution costs per sampling interval, for 1,000 and 10,000 processes and cgroups.

    python bench/attribution.py [--counts 1000,10000] [--repeat 15] [--no-real]

Measured, per interval (median of --repeat intervals after a warm-up one):

- refreshing the process table (schedstat of every process, stat of those that ran and of a
  tenth of the rest, /proc listed from the last PID), on this machine's real /proc with that
  many sleeping processes started for the purpose (besides the machine's own; they are
  stopped at the end); what the kernel alone takes for one pread of every process's stat and
  of its schedstat; and a whole process-level interval there;
- the same on fixture trees (tests/fixtures/node.py) with 10 % of the processes busy in each
  interval, at process, container and pod level, for cgroup v2 and v1 layouts;
- what the ledger adds to a checkpoint of the state file (turning it into JSON, as the
  checkpoint thread does under the sampler's lock), with the default top_n of 100 and with
  every process its own series.

Fixture trees are built in /dev/shm where it exists: the kernel's /proc and cgroupfs are
in-memory filesystems too. Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from carbonmeter import config
from carbonmeter.accounting import EnergyDelta
from carbonmeter.attribution import build
from carbonmeter.attribution.procfs import ProcTable, fd_budget
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import Device
from tests.fixtures.node import standard_node

CPU = Device("package-0", "cpu", "rapl")
DRAM = Device("dram-0", "dram", "rapl")
INTENSITY = Intensity(100.0, "bench", "config", "bench")


def median_ms(fn, repeat: int, between=None) -> float:
    fn()  # warm-up: opens and keeps the files
    times = []
    for _ in range(repeat):
        if between is not None:
            between()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def sleepers(n: int) -> int:
    """Start n sleeping processes in a new process group; returns its id."""
    r, w = os.pipe()
    leader = os.fork()
    if leader == 0:
        os.setpgid(0, 0)
        os.close(r)
        for _ in range(n - 1):
            if os.fork() == 0:
                os.close(w)
                while True:
                    signal.pause()
        os.write(w, b"x")
        while True:
            signal.pause()
    os.close(w)
    os.read(r, 1)
    os.close(r)
    return leader


def preads(fds: list[int]) -> None:
    """Only the system calls: what the kernel takes to write every stat record."""
    for fd in fds:
        try:  # noqa: SIM105 (suppress() would add its own cost to what is measured)
            os.pread(fd, 1024, 0)
        except OSError:  # a process of the machine's that exited meanwhile
            pass


def attributor(procfs: str, sysfs: str, level: str, top_n: int = 100, min_j: float = 1.0):
    cfg = config.load(env={}, overrides={"paths.procfs": procfs, "paths.sysfs": sysfs,
                                         "attribution.level": level,
                                         "attribution.top_n": top_n,
                                         "attribution.min_energy_joules": min_j,
                                         "attribution.idle_watts": {"cpu": 10}})
    a = build(cfg, [], env={})
    a.account([], INTENSITY, 1.0)
    return a


def interval(a) -> None:
    a.account([EnergyDelta(CPU, 100.0, 1.0), EnergyDelta(DRAM, 10.0, 1.0)], INTENSITY, 1.0)


def checkpoint(a, repeat: int) -> list[tuple[str, int, float]]:
    """The ledger's part of a checkpoint: copied under the sampler's lock, then JSON."""
    saved = a.export()
    size = len(json.dumps(saved, separators=(",", ":")))
    series = len(saved["workloads"])
    return [("  checkpoint: copy the ledger (under lock)", series,
             median_ms(a.export, repeat)),
            (f"  checkpoint: to JSON, {size / 1000:,.0f} kB", series,
             median_ms(lambda: json.dumps(saved, separators=(",", ":")), repeat))]


def real(counts: list[int], repeat: int) -> list[tuple[str, int, float]]:
    out = []
    for n in counts:
        group = sleepers(n)  # with the machine's own, a few more than n
        time.sleep(2)  # let the forks settle
        try:
            total = sum(1 for d in os.listdir("/proc") if d.isdigit())
            table = ProcTable("/proc", fd_budget=fd_budget())
            out.append(("refresh the process table, real /proc", total,
                        median_ms(table.refresh, repeat)))
            for what, fds in (("stat", [p.fd for p in table.procs.values() if p.fd >= 0]),
                              ("schedstat", [p.sfd for p in table.procs.values()
                                             if p.sfd >= 0])):
                out.append((f"  kernel alone: one pread of each {what}", len(fds),
                            median_ms(lambda fds=fds: preads(fds), repeat)))
            table.close()
            a = attributor("/proc", "/sys", "process")
            out.append(("process level interval, real /proc", total,
                        median_ms(lambda a=a: interval(a), repeat)))
            a.close()
        finally:
            os.killpg(group, signal.SIGKILL)
            os.waitpid(group, 0)
    return out


def fixtures(counts: list[int], repeat: int, base: Path) -> list[tuple[str, int, float]]:
    out = []
    rng = random.Random(1)
    for n in counts:
        for layout in ("v2", "v1"):
            pods = max(3, n // 10)
            sn = standard_node(Path(tempfile.mkdtemp(dir=base)), layout=layout, pods=pods,
                               containers=n - pods, processes=n)
            node = sn.node
            pids = list(node.procs)

            def busy(node=node, pids=pids) -> None:
                for pid in rng.sample(pids, len(pids) // 10):
                    node.run(pid, 0.01)
                node.elapse(1)
                node.flush()

            cgroups = len(node.cgroups)
            if layout == "v2":
                table = ProcTable(str(node.procfs), fd_budget=fd_budget())
                out.append(("refresh the process table, fixture", len(pids),
                            median_ms(table.refresh, repeat, busy)))
                table.close()
                a = attributor(str(node.procfs), str(node.sysfs), "process")
                out.append(("process level interval, fixture", len(pids),
                            median_ms(lambda a=a: interval(a), repeat, busy)))
                out += checkpoint(a, repeat)
                a.close()
                a = attributor(str(node.procfs), str(node.sysfs), "process", top_n=n,
                               min_j=0.0)
                for _ in range(20):  # nearly every process has run once: its own series
                    busy()
                    interval(a)
                out.append((f"process interval, top_n {n}, min 0 J", len(pids),
                            median_ms(lambda a=a: interval(a), repeat, busy)))
                out += checkpoint(a, repeat)
                a.close()
            for level in ("container", "pod"):
                a = attributor(str(node.procfs), str(node.sysfs), level)
                out.append((f"{level} level interval, cgroup {layout} fixture", cgroups,
                            median_ms(lambda a=a: interval(a), repeat, busy)))
                a.close()
    return out


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}; "
            f"Linux {platform.release()}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1000,10000")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--no-real", action="store_true", help="skip the real /proc runs")
    args = p.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        rows = ([] if args.no_real else real(counts, args.repeat))
        rows += fixtures(counts, args.repeat, Path(tmp))
    print(f"# carbonmeter attribution cost per interval, {time.strftime('%Y-%m-%d')}")
    print(f"# machine: {machine()}")
    print(f"# median of {args.repeat} intervals after a warm-up one; "
          "python bench/attribution.py")
    print("# load average before: " + " ".join(f"{x:.2f}" for x in load))
    print(f"{'what':<44} {'count':>7} {'ms/interval':>12}")
    print("# count: processes or cgroups; for a checkpoint, the workloads with series")
    for what, n, ms in rows:
        print(f"{what:<44} {n:>7} {ms:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
