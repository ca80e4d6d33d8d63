"""Shared pieces of the benchmarks: the fixture host, process accounting, result tables.

Every benchmark runs carbonmeter against the same fixture host: a two-socket powercap tree
(2 packages, 2 DRAM zones, advanced by a background thread at ~150 W per package) and four
fake NVML GPUs (two with energy counters, two power-only) — 8 devices, as on a small GPU server.
Costs are read from the kernel's own accounting of each process (/proc/<pid>/stat utime+stime,
/proc/<pid>/status VmRSS and VmHWM), never from the process's self-report.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEERS = ROOT / "bench" / ".peers"  # throwaway environments for peers, not committed
CLK_TCK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(ROOT))


def machine() -> str:
    """One line that says what the figures were measured on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {os.cpu_count()} CPUs, {mem:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB: resident now, and the peak."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def scrape(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


class FixtureHost:
    """A powercap tree that draws power on its own, and the fake-NVML environment."""

    def __init__(self, root: Path) -> None:
        from tests.fixtures.powercap import two_sockets_with_dram

        self.root = root
        self.tree = two_sockets_with_dram(root / "sys")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for zone, watts in (("intel-rapl:0", 150), ("intel-rapl:1", 140),
                                ("intel-rapl:0:0", 12), ("intel-rapl:1:0", 11)):
                self.tree.advance(zone, watts * 0.05)

    def __enter__(self) -> FixtureHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def config(self, extra: str = "") -> Path:
        path = self.root / f"carbonmeter-{time.monotonic_ns()}.yaml"
        # each exporter checkpoints its totals to its own file, as it would on its own host
        path.write_text(f"paths: {{sysfs: {self.root / 'sys'}}}\ncarbon: {{region: FR}}\n"
                        f"log: {{level: warning}}\nstate: {{path: {path.with_suffix('.state')}}}\n"
                        + extra)
        return path

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": f"{ROOT / 'bench' / 'fake_nvml'}:{ROOT}"}


def compiled(checkout: Path = ROOT) -> None:
    """Byte-compile a checkout's sources, as pip does for an installed wheel: where
    PYTHONDONTWRITEBYTECODE is set, an editable install would otherwise compile every module
    it imports at every start, and start-up figures would count the compiler."""
    for folder in ("exporter", "probes"):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / folder)],
                       check=True, stdout=subprocess.DEVNULL)


def carbonmeter() -> list[str]:
    exe = shutil.which("carbonmeter", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "carbonmeter"]


@contextlib.contextmanager
def serve(host: FixtureHost, interval: float, extra_config: str = "",
          extra_env: dict[str, str] | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """`carbonmeter serve` on the fixture host; yields the process and its /metrics URL."""
    port = free_port()
    proc = subprocess.Popen(
        [*carbonmeter(), "serve", "--config", str(host.config(extra_config)),
         "--listen", f"127.0.0.1:{port}", "--interval", str(interval)],
        env={**host.env(), **(extra_env or {})}, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: b'device="gpu-3"' in scrape(url), 30)
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(15)


def wait_until(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if check():
                return
        time.sleep(0.005)
    raise TimeoutError("condition not met")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_result(name: str, title: str, body: str, notes: str = "") -> str:
    """Print a result table and keep it in bench/results/<name>.txt with the machine."""
    text = (f"# {title}\n\nmachine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}\n"
            f"command: python bench/{name}.py {' '.join(sys.argv[1:])}".rstrip()
            + f"\n\n{body}\n" + (f"\n{notes.strip()}\n" if notes else ""))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text)
    print(text)
    return text


def peer_python(name: str, requirement: str, probe_import: str) -> Path:
    """A throwaway virtual environment holding one peer, made on first use."""
    venv = PEERS / name
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", f"import {probe_import}"],
                                      capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    requirement], check=True)
    return py
