"""What a server draws, in parts, where nothing measures it: the model fitted on measured servers.

The figures come from SPECpower_ssj2008 results (whole-server wall power at active idle and at
100 % load, with the CPU, sockets, threads and memory of each server), fitted by
``config/sources/fit_power.py`` and bundled as ``config/power_model.csv`` (one row per CPU
generation) and ``config/power_params.csv`` (the parts every server shares, and the held-out
error of each estimate). A host's estimate is three parts that add up to its wall power:

- ``cpu``: TDP x sockets x the generation's share of TDP where the TDP is known, else threads x
  the generation's per-thread figure; linear in load between the idle and the full figure;
- ``ram``: W per GB of memory, constant;
- ``platform``: the rest of the server (power supply losses, fans, board, disks): W per socket,
  linear in load.

A guest (a VM, or a container held to a CPU limit) is priced as its share of such a server:
its vCPUs x the generation's per-thread cpu and platform figures, and its own memory. Every
figure is "at the wall", so a part includes its share of power supply losses.

Standard library only, no I/O beyond the bundled files, so the fitting script evaluates the
very function the runtime uses.
"""

from __future__ import annotations

import csv
import functools
import io
from dataclasses import dataclass

__all__ = [
    "CASES", "Figures", "HostEstimate", "PowerModel", "bundled_generations", "bundled_model",
    "bundled_tdps", "host_parts", "parse_model",
]

# Which estimate a machine gets, each with its own held-out error (power_params.csv):
# bare metal with a known TDP, bare metal priced by its generation's per-thread figure, bare
# metal of no known generation, a guest of a known generation, a guest of none.
CASES = ("tdp", "generation", "default", "guest", "guest_default")
DEFAULT = "*"  # the generation key of the row for CPUs of no known generation
MODEL_FILE, PARAMS_FILE = "power_model.csv", "power_params.csv"
GENERATIONS_FILE, TDP_FILE = "cpu_generations.csv", "cpu_tdp.csv"


@dataclass(frozen=True)
class Figures:
    """One generation's row: shares of TDP and per-thread watts, at idle and at full load."""

    generation: str
    servers: int  # training results behind the figures (0: inherited, see basis)
    basis: str  # "fitted", "inherited from <generation>", or what the default row pools
    tdp_idle: float
    tdp_full: float
    thread_idle_w: float
    thread_full_w: float
    platform_thread_idle_w: float
    platform_thread_full_w: float


@dataclass(frozen=True)
class PowerModel:
    ram_w_per_gb: float
    platform_idle_w: float  # per socket
    platform_full_w: float
    generations: dict[str, Figures]
    default: Figures
    errors: dict[str, tuple[float, float]]  # case -> held-out relative error (idle, full)
    source: str

    def figures(self, generation: str | None) -> Figures:
        """A generation's figures, or the default row's for None or a generation not listed."""
        return self.generations.get(generation or "", self.default)


@dataclass(frozen=True)
class HostEstimate:
    """The parts of one estimate, and what decided it (for `carbonmeter probes` and reports)."""

    parts: dict[str, float]  # "cpu", "ram", "platform" -> W
    case: str  # one of CASES
    figures: Figures
    tdp_watts: float | None  # all sockets, where the TDP path was taken
    error: tuple[float, float]  # expected relative error at idle and at full load

    def relative_error(self, load: float) -> float:
        """The expected relative error at a load, linear between the idle and full figures."""
        return _lerp(*self.error, min(1.0, max(0.0, load)))


def _lerp(idle: float, full: float, load: float) -> float:
    return idle + (full - idle) * load


def host_parts(model: PowerModel, *, figures: Figures, tdp_watts: float | None, sockets: int,
               threads: float, memory_gb: float, load: float, virtual: bool) -> dict[str, float]:
    """The parts, in W, once the inputs are resolved (`cpu_model.estimate_host` resolves them
    from a CPU name). `tdp_watts` is the TDP of all sockets, or None. `estimate_host` never
    passes a table's TDP for a guest (a VM's share of a package is not its vCPUs' share of the
    package's TDP), only one the user configured."""
    ram = model.ram_w_per_gb * memory_gb
    if tdp_watts is not None:
        cpu = tdp_watts * _lerp(figures.tdp_idle, figures.tdp_full, load)
    else:
        cpu = threads * _lerp(figures.thread_idle_w, figures.thread_full_w, load)
    if virtual:
        platform = threads * _lerp(figures.platform_thread_idle_w,
                                   figures.platform_thread_full_w, load)
    else:
        platform = sockets * _lerp(model.platform_idle_w, model.platform_full_w, load)
    return {"cpu": cpu, "ram": ram, "platform": platform}


def _rows(text: str) -> list[dict[str, str]]:
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    return list(csv.DictReader(io.StringIO(body)))


def parse_model(model_text: str, params_text: str) -> PowerModel:
    """Read the texts of power_model.csv and power_params.csv."""
    generations = {}
    for row in _rows(model_text):
        f = Figures(
            row["generation"], int(row["servers"]), row["basis"],
            *(float(row[k]) for k in ("tdp_idle", "tdp_full", "thread_idle_w", "thread_full_w",
                                      "platform_thread_idle_w", "platform_thread_full_w")))
        generations[f.generation] = f
    params = {row["name"]: row["value"] for row in _rows(params_text)}
    errors = {case: (float(params[f"error_{case}_idle"]), float(params[f"error_{case}_full"]))
              for case in CASES}
    return PowerModel(
        ram_w_per_gb=float(params["ram_w_per_gb"]),
        platform_idle_w=float(params["platform_idle_w_per_socket"]),
        platform_full_w=float(params["platform_full_w_per_socket"]),
        generations={k: v for k, v in generations.items() if k != DEFAULT},
        default=generations[DEFAULT], errors=errors, source=params["source"])


def _bundled(name: str) -> str:
    from importlib import resources

    return resources.files("carbonmeter.bundled").joinpath(name).read_text("utf-8")


@functools.cache  # read once per process
def bundled_model() -> PowerModel:
    return parse_model(_bundled(MODEL_FILE), _bundled(PARAMS_FILE))


@functools.cache
def bundled_generations() -> dict[str, str]:
    from carbonmeter.probes.cpu_generations import parse_generation_table

    return parse_generation_table(_bundled(GENERATIONS_FILE))


@functools.cache
def bundled_tdps() -> dict[str, float]:
    from carbonmeter.probes.cpu_names import parse_tdp_table

    return parse_tdp_table(_bundled(TDP_FILE))
