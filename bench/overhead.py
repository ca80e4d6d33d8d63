"""What measuring costs the measured: `carbonmeter run -- true` and the Python API.

- `carbonmeter run -- true` against bare `true`: wall time per run, median of N, run as a
  subprocess from here (fork/exec included in both). Two setups: the fixture host's RAPL
  counters alone (counters are read at start and end, nothing samples meanwhile), and the
  built-in defaults on this machine (no sensor, so the CPU and RAM estimates sample).
- beside it, `codecarbon monitor --offline --country-iso-code FRA --no-api -- true`
  (CodeCarbon 3.3's command wrapper; run in a temporary directory, where it writes
  emissions.csv);
- the Python API: `from carbonmeter import track` in a fresh interpreter, then the first
  `with track(): pass` in that process (it discovers the probes and loads what a
  measurement needs) and the median of the later ones, beside CodeCarbon 3.3's
  OfflineEmissionsTracker start()/stop(), first and later, in its own environment.

Usage: python bench/overhead.py [--runs N] [--no-peers]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import FixtureHost, carbonmeter, compiled, median, peer_python, table, write_result

CODECARBON = "codecarbon>=3.3,<3.4"
TRACK_LOOP = """
import sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
from carbonmeter import track
imported = time.perf_counter() - t0
t0 = time.perf_counter()
with track(config={config!r}):  # the first: discovery, configuration, tables
    pass
first = time.perf_counter() - t0
samples = []
for _ in range({runs}):
    t0 = time.perf_counter()
    with track(config={config!r}):
        pass
    samples.append(time.perf_counter() - t0)
samples.sort()
print(imported, first, samples[len(samples) // 2])
"""
CODECARBON_LOOP = """
import logging, sys, tempfile, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
from codecarbon import OfflineEmissionsTracker
imported = time.perf_counter() - t0
out = tempfile.mkdtemp()
samples = []
for i in range({runs} + 1):
    t0 = time.perf_counter()
    t = OfflineEmissionsTracker(country_iso_code="FRA", save_to_file=False, log_level="error",
                                output_dir=out)
    t.start()
    t.stop()
    samples.append(time.perf_counter() - t0)
first, later = samples[0], sorted(samples[1:])
print(imported, first, later[len(later) // 2])
"""


def wall(args: list[str], runs: int, env: dict[str, str], cwd: str | None = None) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True, cwd=cwd)
        times.append(time.perf_counter() - t0)
    return median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-peers", action="store_true", help="skip CodeCarbon")
    args = ap.parse_args()
    compiled()
    true = [*carbonmeter(), "run"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, FixtureHost(Path(tmp)) as host:
        rapl_only = host.config(
            "probes: {disabled: [nvml, cpu_model, ram_model, platform_model]}\n")
        bare = wall(["true"], args.runs, dict(os.environ))
        for label, cfg, env in (
                ("RAPL counters only (fixture)", rapl_only, host.env()),
                ("built-in defaults (estimates)", None, dict(os.environ))):
            cmd = [*true, *(["--config", str(cfg)] if cfg else []), "--", "true"]
            t = wall(cmd, args.runs, env)
            rows.append([f"carbonmeter run -- true, {label}", f"{t * 1e3:.1f}",
                         f"{(t - bare) * 1e3:.1f}"])
        rows.insert(0, ["true", f"{bare * 1e3:.1f}", "0.0"])
        for row in rows:
            row.append("")
        if not args.no_peers:
            cc = peer_python("codecarbon", CODECARBON, "codecarbon").parent / "codecarbon"
            with tempfile.TemporaryDirectory() as cwd:  # it writes emissions.csv here
                t_cc = wall([str(cc), "monitor", "--offline", "--country-iso-code", "FRA",
                             "--no-api", "--", "true"], max(3, args.runs // 4),
                            dict(os.environ), cwd=cwd)
            rows.append(["codecarbon monitor --offline --country-iso-code FRA --no-api -- true",
                         f"{t_cc * 1e3:.1f}", f"{(t_cc - bare) * 1e3:.1f}", ""])
            for row in rows[1:-1]:
                row[-1] = f"{float(row[2]) / ((t_cc - bare) * 1e3):.3f}"
        body = table(["command", "median wall ms", "overhead ms",
                      "overhead / CodeCarbon's"], rows)

        api_rows = []
        for label, cfg, env in (("RAPL counters only (fixture)", str(rapl_only), host.env()),
                                ("built-in defaults (estimates)", None, dict(os.environ))):
            out = subprocess.run([sys.executable, "-c", TRACK_LOOP.format(
                config=cfg, runs=args.runs)], env=env, capture_output=True, text=True,
                check=True).stdout.split()
            api_rows.append([f"carbonmeter track(), {label}", *(float(x) for x in out)])
        if not args.no_peers:
            py = peer_python("codecarbon", CODECARBON, "codecarbon")
            loop = CODECARBON_LOOP.format(runs=max(3, args.runs // 4))
            out = subprocess.run([str(py), "-c", loop],
                                 capture_output=True, text=True, check=True).stdout.split()
            cc = [float(x) for x in out]
            api_rows.append(["CodeCarbon OfflineEmissionsTracker start()+stop()", *cc])
        cells = []
        for name, imported, first, later in api_rows:
            ratios = (f"{first / cc[1]:.3f} / {later / cc[2]:.2f}" if not args.no_peers
                      else "")
            cells.append([name, f"{imported * 1e3:.1f}", f"{first * 1e3:.2f}",
                          f"{later * 1e3:.2f}", ratios])
        body += "\n\n" + table(["Python API", "import ms", "first measurement ms",
                                 "later ones ms (median)", "first / later vs CodeCarbon's"],
                                cells)
    write_result("overhead", "Overhead of carbonmeter run and the Python API", body,
                 notes=f"{args.runs} runs each; wall time measured from this script, fork and "
                       "exec included.")


if __name__ == "__main__":
    main()
