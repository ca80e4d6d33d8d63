"""The exporter's own footprint, side by side with CodeCarbon in the same invocation.

- self CPU per hour of `carbonmeter serve` at intervals of 15 s, 1 s and 0.1 s on the 8-device
  fixture host, without scrapes and with a scrape every 15 s; CodeCarbon 3.3's
  OfflineEmissionsTracker (offline, country FRA) at the same intervals. All run at once for the
  same window. CPU is the kernel's CPU clock of each whole process (clock_gettime on the
  process's CPU-time clock, the scheduler's nanoseconds, dead threads included: CodeCarbon
  starts a thread per measurement) between two instants after every process has started,
  x 3600 / window. Where that clock cannot be read, utime + stime from /proc/PID/stat,
  whose resolution is one clock tick (10 ms: 0.6 s/hour over a 60 s window).
- peak (VmHWM) and steady (VmRSS) memory: carbonmeter with Prometheus only, and with OTLP on
  (OTEL_EXPORTER_OTLP_ENDPOINT pointed at a local receiver); CodeCarbon.
- start-up: exec to the first scrape that returns every device (carbonmeter), exec to
  tracker.start() returning (CodeCarbon); median of N runs.

`--against CHECKOUT` runs another checkout's `carbonmeter serve` (its .venv) beside this
one in the same CPU window and memory runs, for before/after figures on the same machine at
the same time.

Usage: python bench/footprint.py [--window SECONDS] [--runs N] [--no-peers]
                                 [--against CHECKOUT]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    ROOT,
    FixtureHost,
    carbonmeter,
    compiled,
    cpu_seconds,
    free_port,
    median,
    memory_kb,
    peer_python,
    scrape,
    table,
    wait_until,
    write_result,
)

INTERVALS = (15.0, 1.0, 0.1)
CODECARBON = "codecarbon>=3.3,<3.4"
CODECARBON_CHILD = """
import sys, time, logging
from codecarbon import OfflineEmissionsTracker
t = OfflineEmissionsTracker(country_iso_code="FRA", measure_power_secs=float(sys.argv[1]),
                            save_to_file=False, log_level="error", output_dir=sys.argv[2])
t.start()
print("started", flush=True)
time.sleep(10**6)
"""


def process_cpu(pid: int) -> float:
    """CPU seconds of a whole process, to the nanosecond: its CPU-time clock (Linux:
    clockid ~pid << 3 | CPUCLOCK_SCHED), which keeps the time of threads that ended."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        return cpu_seconds(pid)


class _Sink(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and discards them: the cost measured is the sender's."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def otlp_receiver():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def start_codecarbon(py: Path, interval: float, tmp: str) -> subprocess.Popen:
    proc = subprocess.Popen([py, "-c", CODECARBON_CHILD, str(interval), tmp],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "started":
        raise RuntimeError("CodeCarbon did not start")
    return proc


Tool = tuple[str, list[str]]  # a label, and the command that runs carbonmeter


def tools(against: Path | None) -> list[Tool]:
    """This checkout's carbonmeter, and another's (its own venv) to compare with."""
    out: list[Tool] = [("carbonmeter", carbonmeter())]
    if against is not None:
        out.append((f"carbonmeter ({against.name})",
                    [str(against / ".venv" / "bin" / "python"), "-m", "carbonmeter"]))
    return out


def start_serve(host: FixtureHost, interval: float, command: list[str],
                extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [*command, "serve", "--config", str(host.config()),
         "--listen", f"127.0.0.1:{port}", "--interval", str(interval)],
        env={**host.env(), **(extra_env or {})}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    wait_until(lambda: b'device="gpu-3"' in scrape(url), 30)
    return proc, url


def cpu_per_hour(host: FixtureHost, window: float, peer: Path | None,
                 against: Path | None = None) -> str:
    """Every process runs at once; CPU is read from the kernel at two instants after all
    have started (the whole process's CPU clock, dead threads included)."""
    procs: list[tuple[str, float, bool, subprocess.Popen, str | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for interval in INTERVALS:
                for scraped in (False, True):
                    for label, command in tools(against):
                        proc, url = start_serve(host, interval, command)
                        procs.append((label, interval, scraped, proc, url))
            if peer is not None:
                for interval in INTERVALS:
                    procs.append(("CodeCarbon", interval, False,
                                  start_codecarbon(peer, interval, tmp), None))
            time.sleep(5)  # past start-up: first samples, imports done
            c0 = [process_cpu(p[3].pid) for p in procs]
            t0 = time.monotonic()
            next_scrape = t0 + 15
            while (now := time.monotonic()) < t0 + window:
                if now >= next_scrape:
                    for _, _, scraped, _, url in procs:
                        if scraped and url:
                            scrape(url)
                    next_scrape += 15
                time.sleep(min(0.5, max(0.0, next_scrape - time.monotonic())))
            elapsed = time.monotonic() - t0
            per_hour = [(process_cpu(p[3].pid) - c) / elapsed * 3600
                        for p, c in zip(procs, c0, strict=True)]
        finally:
            for p in procs:
                p[3].terminate()
                p[3].wait()
    cc = {p[1]: v for p, v in zip(procs, per_hour, strict=True) if p[0] == "CodeCarbon"}
    rows: list[list[object]] = []
    for (label, interval, scraped, _, _), value in zip(procs, per_hour, strict=True):
        ratio = (f"{value / cc[interval]:.3f}"
                 if label.startswith("carbonmeter") and cc.get(interval) else "")
        rows.append([label, f"{interval:g} s", "every 15 s" if scraped else "none",
                     f"{value:.3f}", f"{value / 36:.4f}", ratio])
    return table(["tool", "interval", "scrapes", "CPU s/hour", "% of a core",
                  "ratio to CodeCarbon"], rows)


def memory(host: FixtureHost, peer: Path | None, against: Path | None = None) -> str:
    rows: list[list[object]] = []
    cc_peak = None
    if peer is not None:
        with tempfile.TemporaryDirectory() as tmp:
            proc = start_codecarbon(peer, 1.0, tmp)
            time.sleep(10)
            rss, hwm = memory_kb(proc.pid)
            proc.kill()
            proc.wait()
        cc_peak = hwm
        rows.append(["CodeCarbon OfflineEmissionsTracker", f"{hwm / 1024:.1f}", f"{rss / 1024:.1f}",
                     ""])
    with otlp_receiver() as endpoint:
        for what, env in (("Prometheus only", {}),
                          ("Prometheus + OTLP",
                           {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                            "OTEL_METRIC_EXPORT_INTERVAL": "1000"})):
            for label, command in tools(against):
                proc, url = start_serve(host, 1.0, command, env)
                try:
                    for _ in range(10):  # steady state: samples, scrapes and exports
                        scrape(url)
                        time.sleep(1)
                    rss, hwm = memory_kb(proc.pid)
                finally:
                    proc.terminate()
                    proc.wait(15)
                ratio = f"{hwm / cc_peak:.3f}" if cc_peak else ""
                rows.append([f"{label}, {what}", f"{hwm / 1024:.1f}", f"{rss / 1024:.1f}",
                             ratio])
    return table(["process", "peak RSS MB", "steady RSS MB", "peak ratio to CodeCarbon"], rows)


def startup(host: FixtureHost, runs: int, peer: Path | None) -> str:
    def carbonmeter_once(config: Path | None, env: dict[str, str]) -> float:
        port = free_port()
        args = [*carbonmeter(), "serve", "--listen", f"127.0.0.1:{port}"]
        if config:
            args += ["--config", str(config)]
        url = f"http://127.0.0.1:{port}/metrics"
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: b"carbonmeter_energy_joules_total{" in scrape(url, 1), 30)
            return time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait()

    def codecarbon_once(tmp: str) -> float:
        t0 = time.perf_counter()
        proc = start_codecarbon(peer, 15.0, tmp)
        took = time.perf_counter() - t0
        proc.kill()
        proc.wait()
        return took

    fixture = [carbonmeter_once(host.config(), host.env()) for _ in range(runs)]
    default = [carbonmeter_once(None, dict(os.environ)) for _ in range(runs)]
    rows = [["carbonmeter serve, 8 fixture devices", f"{median(fixture):.3f}",
             f"{min(fixture):.3f}", f"{max(fixture):.3f}"],
            ["carbonmeter serve, default config (estimates)", f"{median(default):.3f}",
             f"{min(default):.3f}", f"{max(default):.3f}"]]
    if peer is not None:
        with tempfile.TemporaryDirectory() as tmp:
            cc = [codecarbon_once(tmp) for _ in range(runs)]
        rows.append(["CodeCarbon, exec to start() returned", f"{median(cc):.3f}",
                     f"{min(cc):.3f}", f"{max(cc):.3f}"])
        rows[0].append(f"{median(fixture) / median(cc):.3f}")
        rows[1].append(f"{median(default) / median(cc):.3f}")
        rows[2].append("")
    headers = ["start-up (exec to first good scrape)", "median s", "min s", "max s"]
    return table(headers + (["ratio to CodeCarbon"] if peer else []), rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--window", type=float, default=600.0, help="CPU window, seconds")
    ap.add_argument("--runs", type=int, default=10, help="start-up runs per variant")
    ap.add_argument("--no-peers", action="store_true", help="skip CodeCarbon")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="also run this checkout's carbonmeter (CHECKOUT/.venv) alongside")
    args = ap.parse_args()
    for checkout in (ROOT, *([args.against] if args.against else [])):
        compiled(checkout)
    peer = None if args.no_peers else peer_python("codecarbon", CODECARBON, "codecarbon")
    with tempfile.TemporaryDirectory() as tmp, FixtureHost(Path(tmp)) as host:
        parts = [
            "## Self CPU per hour\n\n" + cpu_per_hour(host, args.window, peer, args.against),
            "## Memory\n\n" + memory(host, peer, args.against),
            "## Start-up\n\n" + startup(host, args.runs, peer),
        ]
    write_result("footprint", "carbonmeter footprint vs CodeCarbon", "\n\n".join(parts),
                 notes=f"CPU window {args.window:g} s; CodeCarbon runs on this machine's own "
                       "sensors (here: none, so its CPU model mode), carbonmeter on the 8-device "
                       "fixture host (2 packages, 2 DRAM zones, 4 GPUs).")


if __name__ == "__main__":
    main()
