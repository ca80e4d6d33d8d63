"""Estimated CPU power where no sensor can be read, and the whole-host estimate it is part of.

The figures are fitted on measured servers (SPECpower_ssj2008 wall power at idle and at full
load, see `carbonmeter.probes.power_model` and ``config/sources/fit_power.py``): a package of
known TDP draws the generation's share of it, linear in load between the idle and the full
figure; a CPU of unknown TDP draws its generation's per-thread figure times its threads; a guest
draws its vCPUs' share of a host of its generation, never the whole package.

Linear in load, because power measured against the OS's utilisation (RAPL sweeps) rises about
linearly from idle to full; the curve this module used before (12 % of TDP idle, 32 % at 10 %
load, 75 % at half load, after a 2021 blog's summary of SPECpower's throughput steps) rose far
faster than that, and put idle at 12 % of TDP whatever the CPU.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

from carbonmeter.probes.base import Device, Paths, ProbeRead, ProbeUnavailable, Reading
from carbonmeter.probes.cpu_generations import cpu_generation as generation_of
from carbonmeter.probes.cpu_names import lookup_tdp
from carbonmeter.probes.machine import Machine
from carbonmeter.probes.power_model import (
    HostEstimate,
    PowerModel,
    bundled_generations,
    bundled_model,
    bundled_tdps,
    host_parts,
)

log = logging.getLogger(__name__)

DEFAULT_TDP_PER_SOCKET_W = 85.0  # the median desktop/server TDP; used when all else fails


def _check_load(load: float, threads: float | None) -> float:
    """`load` clamped to 0..1, refusing what no jiffy rounding explains.

    Utilisation read as busy/total jiffies can overshoot 1 (or dip below 0) by a jiffy per CPU
    when /proc/stat is read while counters tick; such a reading is clamped rather than
    extrapolated past the measured figures.
    """
    if not math.isfinite(load):
        raise ValueError(f"load must be a finite number, got {load}")
    if threads is not None and threads <= 0:
        raise ValueError(f"threads must be > 0, got {threads}")
    slack = 0.0 if threads is None else 1.0 / (100 * threads)  # one jiffy per CPU per s
    if not -slack - 1e-9 <= load <= 1.0 + slack + 1e-9 and threads is not None:
        raise ValueError(f"load {load} is outside 0..1 for {threads} threads")
    return min(1.0, max(0.0, load))


def estimate_cpu_watts(tdp_watts: float, load: float, *, threads: int | None = None,
                       generation: str | None = None, model: PowerModel | None = None) -> float:
    """Estimated package power, at the wall, at a CPU utilisation `load` (0..1) of all CPUs.

    `tdp_watts` is the TDP of all packages; `generation` (a `cpu_generations` key) picks that
    generation's shares of TDP, else the default row's. `threads` is the number of logical CPUs
    behind `load`, when the caller knows it: it only bounds `load` (see `_check_load`).
    """
    if not tdp_watts >= 0:
        raise ValueError(f"tdp_watts must be >= 0, got {tdp_watts}")
    load = _check_load(load, threads)
    f = (model or bundled_model()).figures(generation)
    return tdp_watts * (f.tdp_idle + (f.tdp_full - f.tdp_idle) * load)


def cpu_generation(cpu_name: str, *, cpu_family: int | None = None,
                   cpu_model: int | None = None, vendor: str = "",
                   generations: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(generation, what decided it), from the bundled lists unless `generations` is given."""
    table = bundled_generations() if generations is None else generations
    return generation_of(cpu_name, table, family=cpu_family, model=cpu_model, vendor=vendor)


def estimate_host(cpu_name: str, *, sockets: int, threads: float, memory_gb: float,
                  load: float, virtual: bool = False, cpu_family: int | None = None,
                  cpu_model: int | None = None, vendor: str = "",
                  tdp_watts: float | None = None, model: PowerModel | None = None,
                  generations: dict[str, str] | None = None,
                  tdps: dict[str, float] | None = None,
                  generation: str | None = None) -> HostEstimate:
    """`estimate_host_watts` with what decided it: the case, the generation's figures, the
    TDP and the expected error. `tdp_watts` (all sockets) overrides the table's TDP; `model`,
    `generations` and `tdps` replace the bundled tables (the fitting script evaluates a model
    before it is written); `generation` skips finding it (machine detection found it)."""
    if sockets < 1:
        raise ValueError(f"sockets must be >= 1, got {sockets}")
    if not memory_gb >= 0 or not math.isfinite(memory_gb):
        raise ValueError(f"memory_gb must be >= 0, got {memory_gb}")
    load = _check_load(load, threads)
    model = model or bundled_model()
    if generation is None:
        generation, _ = cpu_generation(cpu_name, cpu_family=cpu_family, cpu_model=cpu_model,
                                       vendor=vendor, generations=generations)
    known = generation in model.generations
    figures = model.figures(generation)
    if virtual:
        tdp, case = None, "guest" if known else "guest_default"
    else:
        tdp = tdp_watts
        if tdp is None and cpu_name:
            found = lookup_tdp(cpu_name, bundled_tdps() if tdps is None else tdps)
            tdp = found[0] * sockets if found else None
        case = "tdp" if tdp is not None else "generation" if known else "default"
    parts = host_parts(model, figures=figures, tdp_watts=tdp, sockets=sockets, threads=threads,
                       memory_gb=memory_gb, load=load, virtual=virtual)
    return HostEstimate(parts, case, figures, tdp, model.errors[case])


@dataclass(frozen=True)
class Pricing:
    """How a detected machine is priced: as a whole host, or as its share of one."""

    share: bool  # a guest or a CPU-limited container: vCPUs x the generation's per-thread figures
    threads: float  # logical CPUs priced (a container's limit may be a fraction)
    memory_gb: float
    basis: str  # one line for `carbonmeter probes`


def machine_pricing(machine: Machine) -> Pricing:
    """A container held to a CPU limit is priced by the limit (and by its memory limit, else
    its share of the machine's memory); a guest by its vCPUs and memory; else the host."""
    memory = machine.memory_gb or 0.0
    cpus = machine.cpu_limit
    if cpus is not None:
        limits = machine.limits
        mem = limits.memory_gb if limits and limits.memory_gb is not None else (
            memory * min(1.0, cpus / machine.cpu.threads))
        mem = min(mem, memory) if memory else mem
        return Pricing(True, cpus, mem, f"container limited to {cpus:g} CPUs and "
                       f"{mem:.1f} GiB: its share of a host")
    if machine.virtual:
        return Pricing(True, machine.cpu.threads, memory,
                       f"guest of {machine.hypervisor.name}: {machine.cpu.threads} vCPUs and "
                       f"{memory:.1f} GiB, its share of a host")
    return Pricing(False, machine.cpu.threads, memory,
                   f"bare metal: {machine.cpu.sockets} socket(s), {machine.cpu.threads} "
                   f"threads, {memory:.1f} GiB")


def estimate_machine(machine: Machine, load: float, *, tdp_watts: float | None = None,
                     model: PowerModel | None = None) -> HostEstimate:
    """The estimate that follows from what `machine.detect` found, at utilisation `load` of
    the CPUs priced (a container's: its own CPU time over its limit)."""
    pricing = machine_pricing(machine)
    return estimate_host(
        machine.cpu.name, sockets=machine.cpu.sockets, threads=pricing.threads,
        memory_gb=pricing.memory_gb, load=load, virtual=pricing.share,
        tdp_watts=None if pricing.share else tdp_watts, model=model,
        generation=machine.generation or "")


def estimate_host_watts(cpu_name: str, *, sockets: int, threads: int, memory_gb: float,
                        load: float, virtual: bool = False, cpu_family: int | None = None,
                        cpu_model: int | None = None) -> dict[str, float]:
    """The estimated power of a machine, in parts: ``{"cpu": W, "ram": W, "platform": W}``.

    For a machine whose OS sees `threads` logical CPUs on `sockets` sockets and `memory_gb` of
    memory, at utilisation `load` (0..1) of those CPUs. `virtual=True`: a guest with `threads`
    vCPUs, priced as its share of a host of its CPU's generation (`sockets` is then unused).
    The CPU is known by `cpu_name` (as /proc/cpuinfo spells it), else by `cpu_family` and
    `cpu_model` (cpuinfo's numbers) when the name is hidden or generic. Pure: no I/O but the
    bundled tables, read once.
    """
    return estimate_host(cpu_name, sockets=sockets, threads=threads, memory_gb=memory_gb,
                         load=load, virtual=virtual, cpu_family=cpu_family,
                         cpu_model=cpu_model).parts


def read_cpuinfo(procfs: Path) -> tuple[str, int, int]:
    """(model name, sockets, logical CPUs) from /proc/cpuinfo."""
    model, sockets, threads = "", set(), 0
    try:
        text = (procfs / "cpuinfo").read_text(errors="replace")
    except OSError:
        return "", 1, os.cpu_count() or 1
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            threads += 1
        elif key == "model name" and not model:
            model = value.strip()
        elif key == "physical id":
            sockets.add(value.strip())
    return model, max(1, len(sockets)), max(1, threads)


def _stat_times(fd: int) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the first line of /proc/stat."""
    line = os.pread(fd, 512, 0).split(b"\n", 1)[0].split()
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    values = [int(v) for v in line[1:9]]
    total = sum(values)
    return total - values[3] - values[4], total


class CpuModelProbe:
    """One estimated device for all CPU packages, fed by /proc/stat utilisation."""

    name = "cpu_model"
    may_block = False  # see probes.base.Probe
    covers = frozenset({"cpu"})

    def __init__(self, paths: Paths, *, tdp_watts: float | None = None,
                 tdp_table: dict[str, float] | None = None) -> None:
        model, sockets, self.threads = read_cpuinfo(paths.procfs)
        self.tdp_note = ""
        if tdp_watts is not None:
            self.tdp_watts, self.tdp_note = tdp_watts, "cpu.tdp_watts"
        else:
            from carbonmeter.probes.cpu_names import lookup_tdp

            found = lookup_tdp(model, tdp_table) if model and tdp_table else None
            if found:
                self.tdp_watts = found[0] * sockets
                self.tdp_note = f"{found[0]:g} W x {sockets} socket(s), table entry '{found[1]}'"
            else:
                self.tdp_watts = DEFAULT_TDP_PER_SOCKET_W * sockets
                self.tdp_note = (f"default {DEFAULT_TDP_PER_SOCKET_W:g} W x {sockets} socket(s): "
                                 f"'{model or 'unknown CPU'}' is not in the TDP table; set "
                                 "cpu.tdp_watts")
        try:
            self._fd = os.open(paths.procfs / "stat", os.O_RDONLY)
            self._prev = _stat_times(self._fd)
        except (OSError, ValueError, IndexError) as e:
            raise ProbeUnavailable(f"cannot read {paths.procfs / 'stat'}: {e}") from None
        self.devices = (Device("cpu", "cpu", self.name, model, estimated=True, mean_power=True),)

    def read(self) -> ProbeRead:
        try:
            busy, total = _stat_times(self._fd)
        except (OSError, ValueError, IndexError) as e:
            return ProbeRead([], [f"cpu: cannot read /proc/stat: {e}"])
        d_busy, d_total = busy - self._prev[0], total - self._prev[1]
        self._prev = (busy, total)
        load = d_busy / d_total if d_total > 0 else 0.0
        watts = estimate_cpu_watts(self.tdp_watts, min(1.0, max(0.0, load)), threads=self.threads)
        return ProbeRead([Reading(self.devices[0], power_w=watts)], [])

    def close(self) -> None:
        os.close(self._fd)
