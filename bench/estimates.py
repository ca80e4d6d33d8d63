"""How close the estimates come to measured servers, beside CodeCarbon and Cloud Carbon Footprint.

The measured servers are SPECpower_ssj2008 results (whole-server wall power at active idle and
at 100 % load), split by publication date the way config/sources/fit_power.py splits them: the
model is fitted on the results published before 2022-01 and scored here on the newer ones,
which it has never seen. Each method estimates every held-out server twice:

- bare metal: the sum of its parts (cpu + ram + platform where the method has them) against
  the server's wall power;
- a 2-vCPU guest on that server (what a cloud VM sees: 2 logical CPUs, 1 socket, the server's
  memory x 2 / threads), against 2 / threads x the server's wall power.

Methods:
- carbonmeter before: TDP (bundled table, else 85 W) x sockets x 12 % idle / 102 % full, plus
  3 W per 8 GB; a guest gets its named CPU's whole TDP.
- carbonmeter after: carbonmeter.probes.cpu_model.estimate_host_watts.
- CodeCarbon 3.3.2 (its formulas, with its own CPU matching and RAM model, run from the
  package in a throwaway environment): TDP x sockets x (0.1 + 0.9 x load^3); an unmatched CPU
  is 4 W per thread (x sockets); RAM by its DIMM-count heuristic at 5 W a module.
- Cloud Carbon Footprint: per vCPU (thread), min + load x (max - min) watts of its
  microarchitecture (its average, 0.74-3.5 W, when unknown), plus 0.392 W per GB of memory.

Figures: the energy-weighted error sum |est - wall| / sum wall, the median and interquartile
range of est / wall, for guests the share of servers within 0.5-2x, and how many of the CPU
descriptions each method's tables recognise.

Usage: python bench/estimates.py [--data DIR]   (DIR: the reference data, with ccf/ inside;
default $REFERENCE_DATA_DIR). Installs CodeCarbon 3.3 into bench/.peers/ on first use.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, peer_python, table, write_result

from carbonmeter.probes.cpu_generations import generation_from_name
from carbonmeter.probes.cpu_model import estimate_host_watts
from carbonmeter.probes.cpu_names import lookup_tdp
from carbonmeter.probes.power_model import CASES, bundled_model, bundled_tdps

CODECARBON = "codecarbon>=3.3,<3.4"
GUEST_VCPUS = 2
LEVELS = (("idle", 0.0), ("full", 1.0))

# CodeCarbon's own lookups, asked of the installed package: the TDP its matcher finds for each
# name (None when it finds none) and its RAM estimate for each memory size.
CODECARBON_CHILD = """
import json, sys, logging
logging.disable(logging.CRITICAL)
from codecarbon.core.cpu import TDP
from codecarbon.external.ram import RAM
from codecarbon.input import DataSource
asked = json.load(sys.stdin)
df = DataSource().get_cpu_power_data()
tdp = TDP.__new__(TDP)  # without __init__, which would look at this machine's CPU
out = {"tdp": {}, "ram": {}}
for name in asked["names"]:
    match = tdp._get_matching_cpu(name, df)
    out["tdp"][name] = TDP._get_cpu_constant_power(match, df) if match else None
ram = RAM(tracking_mode="machine")
ram.is_arm_cpu = False
for gb in asked["memory_gb"]:
    out["ram"][repr(gb)] = ram._calculate_ram_power(gb)
print(json.dumps(out))
"""

# Cloud Carbon Footprint's per-vCPU watts at 0 % and 100 % (its coefficients, the same for AWS,
# GCP and Azure; cloud_coefficients.md in the reference data), by the generation lists it made.
CCF_WATTS = {
    "intel-cascadelake": (0.64, 3.97), "intel-skylake-server": (0.65, 4.26),
    "intel-skylake-client": (0.65, 4.26), "intel-broadwell": (0.71, 3.69),
    "intel-haswell": (1.00, 4.74), "intel-coffeelake": (1.14, 5.42),
    "intel-sandybridge": (2.17, 8.58), "intel-ivybridge": (3.04, 8.25),
    "amd-epyc-gen1": (0.82, 2.55), "amd-epyc-gen2": (0.47, 1.69), "amd-epyc-gen3": (0.45, 2.02),
    "amd-neoverse-n1": (0.47, 1.69),  # Graviton 2: CCF reuses EPYC 2nd gen's figures
}
CCF_UNKNOWN = (0.74, 3.5)  # AWS's average, for a microarchitecture it has no figures for
CCF_MEMORY_W_PER_GB = 0.392


def _fit_module():
    path = ROOT / "config" / "sources" / "fit_power.py"
    spec = importlib.util.spec_from_file_location("fit_power", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fit_power"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def codecarbon_lookups(names: list[str], memories: list[float]) -> dict:
    py = peer_python("codecarbon", CODECARBON, "codecarbon")
    out = subprocess.run([py, "-c", CODECARBON_CHILD], check=True, capture_output=True,
                         text=True, input=json.dumps({"names": names, "memory_gb": memories}))
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(pairs: list[tuple[float, float]], guest: bool) -> list[str]:
    """error, median ratio, IQR (and share within 0.5-2x for guests)."""
    ratios = sorted(e / t for e, t in pairs)
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    err = sum(abs(e - t) for e, t in pairs) / sum(t for _, t in pairs)
    cells = [f"{err * 100:.1f} %", f"{med:.2f}", f"{q1:.2f}-{q3:.2f}"]
    if guest:
        within = sum(0.5 <= r <= 2 for r in ratios) / len(ratios)
        cells.append(f"{within * 100:.0f} %")
    return cells


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=os.environ.get("REFERENCE_DATA_DIR"),
                    help="the reference data folder, with ccf/ inside")
    args = ap.parse_args()
    if args.data is None or not (Path(args.data) / "ccf").is_dir():
        print("estimates: no reference data (set REFERENCE_DATA_DIR or --data); skipped")
        return
    fit = _fit_module()
    ccf = Path(args.data) / "ccf"
    listed = fit.read_generation_lists(ccf)
    generations = {k: v[0] for k, v in listed.items()}
    tdps = bundled_tdps()
    results = fit.read_results(ccf / fit.SPECPOWER, generations, tdps)
    test_from = datetime.strptime(fit.TEST_FROM, "%Y-%m").date()
    test = [r for r in results if r.published >= test_from]
    n_train = len(results) - len(test)

    def share(r, guest: bool) -> float:
        return GUEST_VCPUS / r.threads if guest else 1.0

    def before(r, load: float, guest: bool) -> float:
        found = lookup_tdp(r.cpu, tdps)
        sockets = 1 if guest else r.chips
        tdp = (found[0] if found else 85.0) * sockets
        return tdp * (0.12 + 0.90 * load) + 3 / 8 * r.memory_gb * share(r, guest)

    def after(r, load: float, guest: bool) -> float:
        return sum(estimate_host_watts(
            r.cpu, sockets=r.chips, threads=GUEST_VCPUS if guest else r.threads,
            memory_gb=r.memory_gb * share(r, guest), load=load, virtual=guest).values())

    memories = sorted({r.memory_gb * share(r, g) for r in test for g in (False, True)})
    cc = codecarbon_lookups(sorted({r.cpu for r in test}), memories)

    def codecarbon(r, load: float, guest: bool) -> float:
        sockets, threads = (1, GUEST_VCPUS) if guest else (r.chips, r.threads)
        tdp = cc["tdp"][r.cpu]
        max_power = (tdp if tdp is not None else 4 * threads) * sockets
        return (max_power * (0.1 + 0.9 * load ** 3)
                + cc["ram"][repr(r.memory_gb * share(r, guest))])

    def ccf_generation(r) -> str:
        found = generation_from_name(r.cpu, generations)  # CCF's lists, as CCF matches them
        return found[0] if found else ""

    def ccf_method(r, load: float, guest: bool) -> float:
        lo, hi = CCF_WATTS.get(ccf_generation(r), CCF_UNKNOWN)
        vcpus = GUEST_VCPUS if guest else r.threads
        return vcpus * (lo + load * (hi - lo)) + CCF_MEMORY_W_PER_GB * r.memory_gb * share(
            r, guest)

    model = bundled_model()
    recognised: dict[str, Callable[[object], bool]] = {
        "carbonmeter before": lambda r: lookup_tdp(r.cpu, tdps) is not None,
        "carbonmeter after": lambda r: (lookup_tdp(r.cpu, tdps) is not None
                                        or r.generation is not None),
        "CodeCarbon 3.3.2": lambda r: cc["tdp"][r.cpu] is not None,
        "Cloud Carbon Footprint": lambda r: ccf_generation(r) in CCF_WATTS,
    }
    methods = {"carbonmeter before": before, "carbonmeter after": after,
               "CodeCarbon 3.3.2": codecarbon, "Cloud Carbon Footprint": ccf_method}
    descriptions = sorted({r.cpu for r in test})
    sections = []
    for guest in (False, True):
        rows = []
        for name, method in methods.items():
            row = [name]
            for level, load in LEVELS:
                pairs = [(method(r, load, guest), r.wall(level) * share(r, guest))
                         for r in test]
                row += summary(pairs, guest)
            if not guest:
                known = {r.cpu for r in test if recognised[name](r)}
                row.append(f"{sum(recognised[name](r) for r in test)}/{len(test)} results, "
                           f"{len(known)}/{len(descriptions)} CPUs")
            rows.append(row)
        per_level = ["error", "median", "IQR"] + (["0.5-2x"] if guest else [])
        headers = ["method", *(f"{lv} {h}" for lv, _ in LEVELS for h in per_level)]
        if not guest:
            headers.append("CPU descriptions recognised")
        title = (f"{GUEST_VCPUS}-vCPU guest on each server, against {GUEST_VCPUS} / threads x "
                 "wall power" if guest else "bare metal: sum of the parts against wall power")
        sections.append(f"{title}\n\n{table(headers, rows)}")
    bars = table(["case", "idle", "full"], [
        [case, f"± {model.errors[case][0] * 100:.0f} %", f"± {model.errors[case][1] * 100:.0f} %"]
        for case in CASES])
    body = "\n\n".join(sections) + (
        f"\n\nError bars carbonmeter reports for each case (config/power_params.csv):\n\n{bars}")
    notes = (
        f"Held-out: {len(test)} SPECpower_ssj2008 results published {fit.TEST_FROM} to "
        f"{max(r.published for r in test):%Y-%m}; the model was fitted on the {n_train} "
        "published before. error = sum |est - wall| / sum wall; median and IQR of est / wall.")
    write_result("estimates", "Estimates against measured servers (SPECpower)", body, notes)


if __name__ == "__main__":
    main()
