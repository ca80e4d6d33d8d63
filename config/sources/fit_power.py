#!/usr/bin/env python3
"""Fit carbonmeter's server power model on measured servers, and measure its error on others.

Why: where no sensor can be read (cloud VMs, CI runners, containers) the estimate is all a user
gets. This script makes its figures from SPECpower_ssj2008 results (wall power of whole servers
at active idle and at 100 % load), so they can be checked and rebuilt when SPEC publishes more:
the tables it writes are committed, and a rerun on the same data reproduces them byte for byte
(tests/probes/test_power_tables.py checks that).

Usage, from the repository root:

    python config/sources/fit_power.py --data DATA            # rewrite the tables in config/
    python config/sources/fit_power.py --data DATA --check    # exit 1 if they are out of date
    python config/sources/fit_power.py --data DATA --out DIR  # write elsewhere

Reads:
    DATA/ccf/aws-instances-latest-2026.csv, gcp-instances-latest-2026.csv, azure-instances.csv
                                       cloud instance types: vCPUs, memory, platform CPU (CCF,
                                       from the providers' documentation)
    DATA/ccf/SPECpower-2023-05-23.csv  840 SPECpower_ssj2008 results: CPU description, chips,
                                       threads, memory (GB), publication month, average wall
                                       power at active idle and at 100 % (as compiled by Cloud
                                       Carbon Footprint, Apache-2.0)
    DATA/ccf/amd-*.csv, intel-*.csv    CPU model names per generation, one a line (CCF)
    config/cpu_tdp.csv                 the bundled TDP table (config/sources/derive.py)

Writes (into --out, default config/):
    cpu_generations.csv  `model` (normal form), `generation` (the list's file name), `name`
    power_model.csv      per generation: servers, basis, tdp_idle, tdp_full (shares of TDP),
                         thread_idle_w, thread_full_w (cpu W per thread), platform_thread_idle_w,
                         platform_thread_full_w (platform W per thread, for guests); `*` is
                         the row for CPUs of no known generation
    power_params.csv     ram W per GB, platform W per socket at idle and full, and the held-out
                         relative error of each estimate case
    cloud_instances.csv  `provider`, `instance_type`, `vcpus`, `memory_gb`, `cpu` (the platform
                         CPU as the list names it), `generation` (found in it by the runtime's
                         rule; empty where unknown or where the type runs on several)

The model (probes/power_model.py): wall = cpu + ram + platform, with
    ram      = m x memory GB
    platform = sockets x (p_idle + (p_full - p_idle) x load)
    cpu      = TDP x sockets x (a_g + (b_g - a_g) x load)          where the TDP is known
             = threads x (t_idle_g + (t_full_g - t_idle_g) x load)  else
and a guest with v vCPUs draws v x (per-thread cpu + per-thread platform) + m x its memory.

The fit, all on the results published before --test-from (2022-01 by default):
1. each result gets its generation and its TDP as the runtime finds them (its CPU description
   matched against the lists, else read from the vendor's model-number scheme:
   probes.cpu_generations; the TDP from the bundled table);
2. for given m, p_idle, p_full, every generation with at least MIN_SERVERS results gets the
   medians, over its results, of (wall - ram - platform) / (TDP x chips) and / threads, and of
   platform / threads; a generation with fewer inherits from the nearest earlier generation of
   its line; the `*` row pools the results of the last DEFAULT_YEARS years;
3. m is 0.1 W per GB, chosen rather than fitted: wall power alone cannot tell memory from the
   rest, and memory per server grew far faster than its power (DDR4 and DDR5 server modules
   draw about 1.5 to 6 W at rest for 16 to 64 GB). 3 W per 8 GB, the rule the estimate used
   before (DDR3-era modules), alone exceeds the measured idle wall power of 40 % of the
   results published since 2015. p_idle and p_full are then picked on a grid: the values
   whose figures fit the training results of a known generation best (energy-weighted error,
   sum |est - wall| / sum wall), keeping every fitted cpu figure >= 0. The sum barely depends
   on them (the per-generation medians absorb what the platform does not take), so the split
   between cpu and platform is the uncertain part of the estimate, not the total;
4. step 2 with the chosen m and p: the bundled figures.
Then the model is scored on the newer results, which it has never seen, for each case (bare
metal with a TDP, by generation, by neither; a 2-vCPU guest with memory in proportion, against
2 / threads x wall power): those errors are the error bars carbonmeter reports.

Python 3.10+, standard library only.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# The runtime's own modules, so the tables and the estimate cannot drift apart.
from carbonmeter.probes.cpu_generations import cpu_generation  # noqa: E402
from carbonmeter.probes.cpu_model import estimate_host  # noqa: E402
from carbonmeter.probes.cpu_names import (  # noqa: E402
    lookup_tdp,
    normalise_cpu_model,
    parse_tdp_table,
)
from carbonmeter.probes.power_model import (  # noqa: E402
    CASES,
    DEFAULT,
    Figures,
    PowerModel,
    host_parts,
)

SPECPOWER = "SPECpower-2023-05-23.csv"
TEST_FROM = "2022-01"
DEFAULT_YEARS = 4
MIN_SERVERS = 3
GUEST_VCPUS = 2
RAM_W_PER_GB = 0.1  # chosen, not fitted: see step 3 of the docstring
P_IDLE_GRID = [2.5 * i for i in range(17)]  # 0 .. 40 W per socket
P_FULL_GRID = [5.0 * i for i in range(17)]  # 0 .. 80 W per socket
LEVELS = ("idle", "full")

# Each line of CPUs in release order: a generation with too few results inherits the figures
# of the nearest earlier one that has them. A line with none fitted gets no row (the `*` row).
LINES = (
    ("intel-sandybridge", "intel-ivybridge", "intel-haswell", "intel-broadwell",
     "intel-skylake-server", "intel-cascadelake", "intel-icelake", "intel-sapphirerapids",
     "intel-emeraldrapids", "intel-graniterapids"),
    ("intel-skylake-client", "intel-coffeelake"),
    ("amd-epyc-gen1", "amd-epyc-gen2", "amd-epyc-gen3", "amd-epyc-gen4", "amd-epyc-gen5"),
    ("amd-neoverse-n1",),
)

GENERATIONS_HEADER = """\
# carbonmeter bundled CPU generations: which generation a CPU model belongs to.
# Generated by config/sources/fit_power.py from reference data; do not edit by hand.
# Source: Cloud Carbon Footprint, ccf-coefficients repository (Apache-2.0), the per-generation
#   CPU lists amd-epyc-gen1..5, amd-neoverse-n1 and intel-*.csv (commit b0032d9, 2026-04-24).
# model: probes.cpu_names.normalise_cpu_model(name), the lookup key; generation: the list's file
#   name. intel-skylake.csv mixes server and client parts: its names are intel-skylake-server
#   unless intel-skylake-client.csv lists them too.
"""

MODEL_HEADER = """\
# carbonmeter bundled server power model: figures per CPU generation, at the wall.
# Generated by config/sources/fit_power.py from reference data; do not edit by hand.
# Source: SPECpower_ssj2008 results (SPEC, spec.org/power_ssj2008), average wall power of each
#   server at active idle and at 100 % load, as compiled by Cloud Carbon Footprint
#   (ccf-coefficients, Apache-2.0, SPECpower-2023-05-23.csv); results published {span}.
# tdp_idle, tdp_full: the cpu part as a share of TDP x sockets; thread_*_w: the cpu part per
#   thread, W; platform_thread_*_w: the platform part per thread, W (a guest's share). Medians
#   over the generation's results of (wall - ram - platform) / (TDP x sockets) and / threads.
# servers: training results behind the row; basis: fitted, inherited from an earlier
#   generation of the same line, or (row *) the results pooled for CPUs of no known generation.
"""

INSTANCES_HEADER = """\
# carbonmeter bundled cloud instance types: vCPUs, memory and the CPU generation they run on.
# Generated by config/sources/fit_power.py from reference data; do not edit by hand.
# Source: Cloud Carbon Footprint, ccf-coefficients repository (Apache-2.0, commit b0032d9,
#   2026-04-24), from the providers' documentation: aws-instances-latest-2026.csv,
#   gcp-instances-latest-2026.csv, azure-instances.csv (azure: every microarchitecture a VM size
#   runs on; generation empty when they differ).
# generation: probes.cpu_generations.cpu_generation of the platform CPU; memory_gb as listed
#   (GiB for AWS).
"""

PARAMS_HEADER = """\
# carbonmeter bundled server power model: the parts every server shares, and the error bars.
# Generated by config/sources/fit_power.py from reference data; do not edit by hand.
# Source: as power_model.csv. error_<case>_<level>: sum |estimate - measured| / sum measured
#   over SPECpower results the model was not fitted on (published from the test month on).
"""


@dataclass(frozen=True)
class Result:
    """One SPECpower result, with what the runtime would find for its CPU."""

    cpu: str
    chips: int
    threads: int
    memory_gb: float
    idle: float
    full: float
    published: date
    generation: str | None
    tdp_per_chip: float | None

    def wall(self, level: str) -> float:
        return self.idle if level == "idle" else self.full


# --- reading -------------------------------------------------------------------------------------


def read_generation_lists(ccf: Path) -> dict[str, tuple[str, str]]:
    """{normal form: (generation, name as listed)} from the per-generation CPU lists."""
    lists: dict[str, dict[str, str]] = {}
    for path in sorted([*ccf.glob("amd-*.csv"), *ccf.glob("intel-*.csv")]):
        names: dict[str, str] = {}
        for row in csv.reader(io.StringIO(path.read_text(encoding="utf-8"))):
            # Empty lines end amd-epyc-gen5.csv: a pattern made from one would match every CPU.
            name = row[0].strip() if row else ""
            key = normalise_cpu_model(name) if name else ""
            if key and key not in names:
                names[key] = name
        lists[path.stem] = names
    client = lists.get("intel-skylake-client", {})
    out: dict[str, tuple[str, str]] = {}
    for generation, names in lists.items():
        for key, name in names.items():
            generation_here = generation
            if generation in ("intel-skylake", "intel-skylake-server"):
                server = "intel-skylake-client" if key in client else "intel-skylake-server"
                generation_here = server
            if key in out and out[key][0] != generation_here:
                raise SystemExit(f"{name!r} is listed under {out[key][0]} and {generation_here}")
            out.setdefault(key, (generation_here, name))
    return out


def _memory_gb(value: float, chips: int) -> float:
    """Total memory in GB. A few multi-node results give it in TB (1-3 with 8-28 chips)."""
    return value * 1024 if value <= 4 and value < chips else value


def read_results(path: Path, generations: dict[str, str],
                 tdps: dict[str, float]) -> list[Result]:
    results = []
    for row in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))):
        cpu, chips = row["CPU Description"].strip(), int(row["Chips"])
        generation, _ = cpu_generation(cpu, generations)
        found_tdp = lookup_tdp(cpu, tdps)
        results.append(Result(
            cpu=cpu, chips=chips, threads=int(row["Total Threads"]),
            memory_gb=_memory_gb(float(row["Total Memory (GB)"]), chips),
            idle=float(row["avg. watts @ active idle"]), full=float(row["avg. watts @ 100%"]),
            published=datetime.strptime(row["Published"], "%b-%Y").date(),
            generation=generation,
            tdp_per_chip=found_tdp[0] if found_tdp else None))
    return results


def read_instances(ccf: Path, generations: dict[str, str]) -> list[list[str]]:
    """provider, instance_type, vcpus, memory_gb, cpu, generation; sorted."""
    def rows(name: str) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO((ccf / name).read_text(encoding="utf-8"))))

    def generation(cpu: str) -> str:
        return cpu_generation(cpu, generations)[0] or "" if cpu else ""

    def number(text: str) -> str:
        return f"{float(text):g}"

    out = []
    for r in rows("aws-instances-latest-2026.csv"):
        cpu = r["Platform CPU Name"].strip()
        out.append(["aws", r["Instance Type"].strip(), number(r["vCPUs"]),
                    number(r["Memory (GiB)"]),
                    cpu, generation(cpu)])
    for r in rows("gcp-instances-latest-2026.csv"):
        if not re.fullmatch(r"\d+(\.\d+)?", r["Instance vCPU"].strip()):
            continue  # a second header line
        cpu = r["CPU Name"].strip() or r["Microarchitecture"].strip()
        out.append(["gcp", r["Instance Type"].strip(), number(r["Instance vCPU"]),
                    number(r["Instance Memory"]), cpu, generation(cpu)])
    azure: dict[str, list[dict[str, str]]] = {}
    for r in rows("azure-instances.csv"):
        azure.setdefault(r["Virtual Machine"].strip(), []).append(r)
    for vm, runs in azure.items():
        micro = list(dict.fromkeys(r["Microarchitecture"].strip() for r in runs))
        gens = {generation(m) for m in micro if m != "Unknown"}
        only = gens.pop() if len(gens) == 1 and "" not in gens else ""
        out.append(["azure", vm, number(runs[0]["Instance vCPUs"]),
                    number(runs[0]["Instance Memory"]),
                    " / ".join(micro), only])
    return sorted(out)


# --- fitting -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Globals:
    m: float
    p_idle: float
    p_full: float

    def platform(self, r: Result, level: str) -> float:
        return r.chips * (self.p_idle if level == "idle" else self.p_full)

    def cpu(self, r: Result, level: str) -> float:
        return r.wall(level) - self.m * r.memory_gb - self.platform(r, level)


def _medians(results: list[Result], g: Globals) -> tuple[float, ...] | None:
    """tdp_idle, tdp_full, thread_idle_w, thread_full_w, platform_thread_idle_w, _full_w."""
    with_tdp = [r for r in results if r.tdp_per_chip]
    if len(results) < MIN_SERVERS or len(with_tdp) < MIN_SERVERS:
        return None
    med = statistics.median
    return (
        *(med(g.cpu(r, lv) / (r.tdp_per_chip * r.chips) for r in with_tdp) for lv in LEVELS),
        *(med(g.cpu(r, lv) / r.threads for r in results) for lv in LEVELS),
        *(med(g.platform(r, lv) / r.threads for r in results) for lv in LEVELS),
    )


def fit(results: list[Result], g: Globals) -> PowerModel:
    """The figures of every generation for the given shared parts (step 2 of the docstring)."""
    by_generation: dict[str, list[Result]] = {}
    for r in results:
        if r.generation:
            by_generation.setdefault(r.generation, []).append(r)
    generations: dict[str, Figures] = {}
    for line in LINES:
        previous: Figures | None = None
        for generation in line:
            own = by_generation.get(generation, [])
            values = _medians(own, g)
            if values is not None:
                previous = Figures(generation, len(own), "fitted", *values)
                generations[generation] = previous
            elif previous is not None:
                generations[generation] = Figures(
                    generation, 0, f"inherited from {previous.generation}",
                    *_values(previous))
    last = max(r.published for r in results)
    recent = [r for r in results if r.published.year > last.year - DEFAULT_YEARS]
    default_values = _medians(recent, g)
    assert default_values is not None, "too few recent results for the default row"
    first = min(r.published for r in recent)
    default = Figures(DEFAULT, len(recent),
                      f"all results published {first:%Y-%m} to {last:%Y-%m}", *default_values)
    return PowerModel(ram_w_per_gb=g.m, platform_idle_w=g.p_idle, platform_full_w=g.p_full,
                      generations=generations, default=default,
                      errors=dict.fromkeys(CASES, (0.0, 0.0)), source="")


def _values(f: Figures) -> tuple[float, ...]:
    return (f.tdp_idle, f.tdp_full, f.thread_idle_w, f.thread_full_w, f.platform_thread_idle_w,
            f.platform_thread_full_w)


def bare_metal(model: PowerModel, r: Result, level: str) -> float:
    """The whole-server estimate of a result as the runtime makes it (precomputed lookups)."""
    tdp = r.tdp_per_chip * r.chips if r.tdp_per_chip else None
    parts = host_parts(model, figures=model.figures(r.generation), tdp_watts=tdp,
                       sockets=r.chips, threads=r.threads, memory_gb=r.memory_gb,
                       load=0.0 if level == "idle" else 1.0, virtual=False)
    return sum(parts.values())


def energy_weighted_error(pairs: Iterable[tuple[float, float]]) -> float:
    """sum |estimate - measured| / sum measured."""
    pairs = list(pairs)
    return sum(abs(e - t) for e, t in pairs) / sum(t for _, t in pairs)


def _fitted_cpu_figures_positive(model: PowerModel, level: str) -> bool:
    i = LEVELS.index(level)
    rows = [f for f in model.generations.values() if f.basis == "fitted"] + [model.default]
    return all(_values(f)[i] >= 0 and _values(f)[2 + i] >= 0 for f in rows)


def choose_platform(training: list[Result]) -> Globals:
    """Step 3 of the docstring: the platform figures that fit the training results best."""
    known = [r for r in training if r.generation]
    chosen = []
    for level, grid in (("idle", P_IDLE_GRID), ("full", P_FULL_GRID)):
        best: tuple[float, float] | None = None
        for p in grid:  # ties keep the smaller figure
            model = fit(training, Globals(RAM_W_PER_GB, p, p))
            if not _fitted_cpu_figures_positive(model, level):
                continue
            err = energy_weighted_error((bare_metal(model, r, level), r.wall(level))
                                        for r in known)
            if best is None or err < best[0]:
                best = (err, p)
        assert best is not None, f"no platform figure keeps every cpu figure >= 0 at {level}"
        chosen.append(best[1])
    return Globals(RAM_W_PER_GB, *chosen)


# --- held-out evaluation -------------------------------------------------------------------------


def held_out_errors(model: PowerModel, test: list[Result], generations: dict[str, str],
                    tdps: dict[str, float]) -> dict[str, tuple[float, float, int]]:
    """(idle error, full error, results) of each case, through the runtime's estimate_host."""
    def run(results: list[Result], *, guest: bool, gens: dict[str, str],
            tdp_table: dict[str, float], named: bool = True) -> tuple[float, float, int]:
        errs = []
        for level in LEVELS:
            pairs = []
            for r in results:
                share = GUEST_VCPUS / r.threads if guest else 1.0
                est = estimate_host(
                    r.cpu if named else "", sockets=r.chips,
                    threads=GUEST_VCPUS if guest else r.threads,
                    memory_gb=r.memory_gb * share, load=0.0 if level == "idle" else 1.0,
                    virtual=guest, model=model, generations=gens, tdps=tdp_table)
                pairs.append((sum(est.parts.values()), r.wall(level) * share))
            errs.append(energy_weighted_error(pairs))
        return errs[0], errs[1], len(results)

    known = [r for r in test if r.generation in model.generations]
    return {
        "tdp": run([r for r in test if r.tdp_per_chip], guest=False, gens=generations,
                   tdp_table=tdps),
        "generation": run(known, guest=False, gens=generations, tdp_table={}),
        "default": run(test, guest=False, gens={}, tdp_table={}, named=False),
        "guest": run(known, guest=True, gens=generations, tdp_table=tdps),
        "guest_default": run(test, guest=True, gens={}, tdp_table={}, named=False),
    }


# --- writing -------------------------------------------------------------------------------------


def _csv(header: str, columns: list[str], rows: Iterable[list[str]]) -> str:
    out = io.StringIO()
    out.write(header)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    return out.getvalue()


def _f3(x: float) -> str:
    return f"{x:.3f}"


def build(data: Path) -> dict[str, str]:
    """{file name: text} of the four tables."""
    ccf = data / "ccf"
    listed = read_generation_lists(ccf)
    generations = {k: v[0] for k, v in listed.items()}
    tdps = parse_tdp_table((ROOT / "config" / "cpu_tdp.csv").read_text(encoding="utf-8"))
    results = read_results(ccf / SPECPOWER, generations, tdps)
    test_from = datetime.strptime(TEST_FROM, "%Y-%m").date()
    training = [r for r in results if r.published < test_from]
    test = [r for r in results if r.published >= test_from]
    g = choose_platform(training)
    model = fit(training, g)
    errors = held_out_errors(model, test, generations, tdps)

    gen_rows = sorted([k, v[0], v[1]] for k, v in listed.items())
    span = (f"{min(r.published for r in training):%Y-%m} to "
            f"{max(r.published for r in training):%Y-%m} ({len(training)} results)")
    figures = [model.default, *sorted(model.generations.values(), key=lambda f: f.generation)]
    model_rows = [[f.generation, str(f.servers), f.basis, *map(_f3, _values(f))]
                  for f in figures]
    source = (f"SPECpower_ssj2008, {len(training)} results published {span.split(' (')[0]}; "
              f"error bars from {len(test)} results published {TEST_FROM} to "
              f"{max(r.published for r in test):%Y-%m}")
    params = [
        ["source", source, "what the figures were fitted on and tested on"],
        ["ram_w_per_gb", _f3(g.m), "ram part: W per GB of memory"],
        ["platform_idle_w_per_socket", f"{g.p_idle:.1f}", "platform part at idle: W per socket"],
        ["platform_full_w_per_socket", f"{g.p_full:.1f}", "platform part at full load"],
    ]
    what = {"tdp": "bare metal, TDP known", "generation": "bare metal, TDP unknown, by generation",
            "default": "bare metal, no generation known",
            "guest": f"{GUEST_VCPUS}-vCPU guest of a known generation",
            "guest_default": f"{GUEST_VCPUS}-vCPU guest, no generation known"}
    for case in CASES:
        idle, full, n = errors[case]
        params += [[f"error_{case}_idle", _f3(idle), f"{what[case]}: {n} results, at idle"],
                   [f"error_{case}_full", _f3(full), f"{what[case]}: {n} results, at full load"]]
    return {
        "cpu_generations.csv": _csv(GENERATIONS_HEADER, ["model", "generation", "name"],
                                    gen_rows),
        "power_model.csv": _csv(MODEL_HEADER.format(span=span),
                                ["generation", "servers", "basis", "tdp_idle", "tdp_full",
                                 "thread_idle_w", "thread_full_w", "platform_thread_idle_w",
                                 "platform_thread_full_w"], model_rows),
        "power_params.csv": _csv(PARAMS_HEADER, ["name", "value", "meaning"], params),
        "cloud_instances.csv": _csv(INSTANCES_HEADER, ["provider", "instance_type", "vcpus",
                                                       "memory_gb", "cpu", "generation"],
                                    read_instances(ccf, generations)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True,
                    help="the reference data folder (with ccf/ inside)")
    ap.add_argument("--out", type=Path, default=ROOT / "config")
    ap.add_argument("--check", action="store_true", help="exit 1 if a table is out of date")
    args = ap.parse_args(argv)
    tables = build(args.data)
    stale = []
    for name, text in tables.items():
        path = args.out / name
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8", newline="\n")
            print(f"wrote {path}")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
