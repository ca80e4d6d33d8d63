"""How fast carbonmeter can sample, and what one sample costs.

In one process, on the 8-device fixture host: `Sampler.sample()` (read every probe, account,
publish a snapshot) in a tight loop for a few seconds gives the maximum sustained sampling rate
and the CPU of one sample; rendering the exposition of a fresh snapshot is timed the same way,
since at most one render happens per sample whatever the number of scrapes.

A sample in `serve` is not warm: the loop sleeps a whole interval, and wakes to cold caches.
So the same sampler also runs its own loop (one sample per `--interval`, as in `serve`), and
beside it a thread that wakes as often and does nothing: the floor any sampling thread of
this interpreter pays per interval on this machine. Both are timed on the process's CPU
clock (all threads, the scheduler's nanoseconds).

Usage: python bench/sampling.py [--seconds S] [--interval S] [--woken N]
"""

from __future__ import annotations

import argparse
import contextlib
import runpy
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, FixtureHost, table, write_result

# the in-memory fake NVML, as in the other benchmarks' child processes
runpy.run_path(str(ROOT / "bench" / "fake_nvml" / "sitecustomize.py"))


def loop(fn, seconds: float) -> tuple[int, float, float]:
    """(iterations, wall seconds, CPU seconds) of calling fn for about `seconds`."""
    n, w0, c0 = 0, time.perf_counter(), time.process_time()
    deadline = w0 + seconds
    while time.perf_counter() < deadline:
        for _ in range(50):
            fn()
        n += 50
    return n, time.perf_counter() - w0, time.process_time() - c0


def threads_cpu(leave_out: int | None) -> float:
    """CPU seconds of this process's live threads but one (the fixture's own, which
    advances the counters 20 times a second), from the scheduler's nanoseconds."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        if task.name != str(leave_out):
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def woken(fn, interval: float, n: int, leave_out: int | None) -> float:
    """CPU seconds per wake-up of a thread that sleeps `interval` and then calls fn, n times
    (every thread but the fixture's: a probe's read thread counts; the main one sleeps)."""
    done = threading.Event()

    def run() -> None:
        for _ in range(n):
            if done.wait(interval):
                return
            fn()

    t = threading.Thread(target=run)
    c0 = threads_cpu(leave_out)
    t.start()
    time.sleep(interval * (n - 0.5))  # the thread's CPU is read while it lives
    c1 = threads_cpu(leave_out)
    t.join()
    return (c1 - c0) / (n - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--interval", type=float, default=1.0, help="for the woken rows")
    ap.add_argument("--woken", type=int, default=20, help="wake-ups timed per woken row")
    args = ap.parse_args()
    from carbonmeter import config
    from carbonmeter.carbon.resolve import resolve
    from carbonmeter.discovery import discover
    from carbonmeter.sampler import Sampler
    from carbonmeter.sinks.prometheus import Renderer

    with tempfile.TemporaryDirectory() as tmp, FixtureHost(Path(tmp)) as host:
        cfg = config.load(host.config(), env={})
        probes, _ = discover(cfg)
        devices = sum(len(p.devices) for p in probes)
        sampler = Sampler(probes, resolve(cfg.carbon), pue=1.0, interval=1.0)
        sampler.sample()
        n, wall, cpu = loop(sampler.sample, args.seconds)
        renderer = Renderer(lambda: sampler.latest)

        def render() -> None:
            sampler.latest = sampler._publish(sampler.latest.intensity)  # new: no cache hit
            renderer.render("", False)

        rn, rwall, rcpu = loop(render, args.seconds)
        fixture = host._thread.native_id
        idle = woken(lambda: None, args.interval, args.woken, fixture)
        cold = woken(sampler.sample, args.interval, args.woken, fixture)
        per_probe = []
        for p in probes:
            pn, pw, pc = loop(p.read, args.seconds / 2)
            per_probe.append([f"  {p.name}.read() ({len(p.devices)} devices)",
                              f"{pw / pn * 1e6:.1f}", f"{pc / pn * 1e6:.1f}", ""])
        sampler.close()
    rows = [
        [f"sample(): {devices} devices", f"{wall / n * 1e6:.1f}", f"{cpu / n * 1e6:.1f}",
         f"{n / wall:,.0f}"],
        *per_probe,
        ["render one new snapshot (text format)", f"{rwall / rn * 1e6:.1f}",
         f"{rcpu / rn * 1e6:.1f}", ""],
        [f"sample() woken every {args.interval:g} s, as in serve", "", f"{cold * 1e6:.1f}", ""],
        [f"a thread woken every {args.interval:g} s doing nothing", "", f"{idle * 1e6:.1f}",
         ""],
    ]
    at_10hz = (cpu / n) * 10 * 100
    write_result("sampling", "Sampling rate and cost per sample",
                 table(["operation", "wall µs", "CPU µs", "max sustained samples/s"], rows),
                 notes=f"At 10 Hz one sample costs {at_10hz:.3f} % of a core in the loop "
                       "itself (bench/footprint.py measures the whole process at 0.1 s). "
                       f"Woken every {args.interval:g} s: {cold * 3600 / args.interval:.2f} s "
                       f"of CPU an hour, of which {idle * 3600 / args.interval:.2f} s is the "
                       "wake-up alone.")


if __name__ == "__main__":
    main()
