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

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from carbonmeter.probes.base import (
    Device,
    Paths,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
    limits,
)
from carbonmeter.probes.cpu_generations import cpu_generation as generation_of
from carbonmeter.probes.cpu_names import lookup_tdp
from carbonmeter.probes.machine import Machine, detect, read_cpu
from carbonmeter.probes.power_model import (
    HostEstimate,
    PowerModel,
    bundled_generations,
    bundled_model,
    bundled_tdps,
    host_parts,
)

log = logging.getLogger(__name__)


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
    if virtual:  # the table's TDP is the whole package's: only a configured one counts
        tdp = tdp_watts
        case = "tdp" if tdp is not None else "guest" if known else "guest_default"
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
    the CPUs priced (a container's: its own CPU time over its limit). `tdp_watts`, the user's
    `cpu.tdp_watts`, prices the cpu part wherever it is set, a guest included."""
    pricing = machine_pricing(machine)
    return estimate_host(
        machine.cpu.name, sockets=machine.cpu.sockets, threads=pricing.threads,
        memory_gb=pricing.memory_gb, load=load, virtual=pricing.share,
        tdp_watts=tdp_watts, model=model,
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
    cpu = read_cpu(procfs)
    return cpu.name, cpu.sockets, cpu.threads


def _stat_times(fd: int) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the first line of /proc/stat."""
    line = os.pread(fd, 512, 0).split(b"\n", 1)[0].split()
    # user nice system idle iowait irq softirq steal; guest time is already in user.
    values = [int(v) for v in line[1:9]]
    total = sum(values)
    return total - values[3] - values[4], total


class LoadMeter:
    """The utilisation of the CPUs a machine is priced by, over each interval between reads.

    In a container held to a CPU limit: its own CPU time (its cgroup's counter) over the
    limit's CPU-seconds; elsewhere the busy share of /proc/stat (the guest's or the host's).
    """

    def __init__(self, paths: Paths, machine: Machine) -> None:
        self._paths, self._machine = paths, machine
        self._fd: int | None = None
        self._limit = machine.cpu_limit
        self._cgroup = machine.limits if self._limit else None
        first = self._cgroup.cpu_seconds() if self._cgroup else None
        if first is not None:
            self._prev: tuple[float, float] = (first, time.monotonic())
            self.source = f"the container's own CPU time ({self._cgroup.usage_file})"
            return
        self._cgroup = None
        try:
            self._fd = os.open(paths.procfs / "stat", os.O_RDONLY)
            self._prev = _stat_times(self._fd)
        except (OSError, ValueError, IndexError) as e:
            if self._fd is not None:
                os.close(self._fd)
            raise ProbeUnavailable(f"cannot read {paths.procfs / 'stat'}: {e}") from None
        self.source = f"{paths.procfs / 'stat'} (busy share of all CPUs)"

    def read(self) -> float:
        """Utilisation 0..1 since the previous read; raises OSError or ValueError."""
        if self._cgroup is not None:
            used, now = self._cgroup.cpu_seconds(), time.monotonic()
            if used is None:
                raise OSError(f"cannot read {self._cgroup.usage_file}")
            d_used, d_t = used - self._prev[0], now - self._prev[1]
            self._prev = (used, now)
            return min(1.0, max(0.0, d_used / (d_t * self._limit))) if d_t > 0 else 0.0
        busy, total = _stat_times(self._fd)
        d_busy, d_total = busy - self._prev[0], total - self._prev[1]
        self._prev = (busy, total)
        return min(1.0, max(0.0, d_busy / d_total)) if d_total > 0 else 0.0

    def fork(self) -> LoadMeter:
        """A meter of the same CPUs with its own baseline (now), for another measurement."""
        return LoadMeter(self._paths, self._machine)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


_CASES = {"tdp": "its TDP known", "generation": "by its generation",
          "default": "no generation known", "guest": "by its generation",
          "guest_default": "no generation known"}


def describe(machine: Machine, idle: HostEstimate, full: HostEstimate, part: str,
             load_source: str = "") -> tuple[str, ...]:
    """What `carbonmeter probes` prints under an estimated probe: what was detected, which
    estimate follows from it, and the error bar."""
    hv = machine.hypervisor
    pricing = machine_pricing(machine)
    evidence = f" ({'; '.join(hv.evidence)})" if hv.evidence else ""
    cloud = f", cloud {hv.cloud}" if hv.cloud else ""
    what = f"guest of {hv.name}" if hv.virtual else "bare metal"
    lines = [f"machine: {what}{cloud}{evidence}"]
    lines += list(machine.notes)
    if machine.limits and machine.limits.source:
        lines.append("limits: " + "; ".join(machine.limits.source))
    c = machine.cpu
    lines.append(f"cpu: '{c.name or 'no model name'}' ({c.vendor or 'unknown vendor'}, family "
                 f"{c.family}, model {c.model}): generation "
                 f"{machine.generation or 'unknown'}, from {machine.generation_source}")
    f = idle.figures
    row = (f"row {f.generation}, {f.basis}"
           + (f", {f.servers} SPECpower results" if f.servers else ""))
    lines.append(f"priced as: {pricing.basis}; {_CASES[idle.case]} ({row})")
    if part == "cpu" and idle.tdp_watts is not None:
        lines.append(f"cpu: TDP {idle.tdp_watts:g} W x {f.tdp_idle:g} idle to {f.tdp_full:g} "
                     "full")
    lines.append(f"{part}: {idle.parts[part]:.3g} W idle to {full.parts[part]:.3g} W at full "
                 "load" + (f", load from {load_source}" if load_source else ""))
    lines.append(f"error bar: ± {idle.error[0] * 100:.0f} % at idle, ± {idle.error[1] * 100:.0f} "
                 f"% at full load (held-out SPECpower results, case {idle.case})")
    return tuple(lines)


class LoadModelProbe(Probe):
    """One estimated device whose power follows the load of the CPUs the machine is priced
    by (see `machine_pricing`): linear from the model's `part` at idle to it at full load."""

    may_block = False  # /proc/stat and cgroup files are the kernel's memory: a read never waits
    part: str  # the power model's part this probe estimates: "cpu", "platform"

    def __init__(self, paths: Paths, *, tdp_watts: float | None = None,
                 instance_type: str = "", model: PowerModel | None = None) -> None:
        self.machine = detect(paths, instance_type=instance_type)
        m = model or bundled_model()
        self.idle = estimate_machine(self.machine, 0.0, tdp_watts=tdp_watts, model=m)
        self.full = estimate_machine(self.machine, 1.0, tdp_watts=tdp_watts, model=m)
        self._lo, self._hi = self.idle.parts[self.part], self.full.parts[self.part]
        self._load = LoadMeter(paths, self.machine)
        self.devices = (Device(self.part, self.part, self.name, self.device_name(),
                               estimated=True, mean_power=True, error=self.idle.error,
                               power_range_w=(self._lo, self._hi)),)

    def device_name(self) -> str:
        raise NotImplementedError

    def read(self) -> ProbeRead:
        try:
            load = self._load.read()
        except (OSError, ValueError, IndexError) as e:
            return ProbeRead([], [f"{self.part}: cannot read the load: {e}"])
        return ProbeRead([Reading(self.devices[0],
                                  power_w=self._lo + (self._hi - self._lo) * load)], [])

    def close(self) -> None:
        self._load.close()

    def reader(self) -> Self:
        """A copy sharing what discovery found, with a LoadMeter of its own: the previous
        /proc/stat times are the only state a read changes, and they are per measurement."""
        reader = copy.copy(self)
        reader._load = self._load.fork()
        return reader

    def notes(self) -> tuple[str, ...]:
        return describe(self.machine, self.idle, self.full, self.part, self._load.source)

    def idle_watts(self) -> dict[str, float]:
        return {self.devices[0].id: self._lo}


class CpuModelProbe(LoadModelProbe):
    """The CPUs, estimated from their TDP or generation and their utilisation."""

    name = "cpu_model"
    part = "cpu"
    covers = frozenset({"cpu"})

    def device_name(self) -> str:
        return self.machine.cpu.name


@dataclass(frozen=True)
class CpuConfig:
    """Section `cpu`: the estimate's inputs where no sensor measures the CPU."""

    tdp_watts: float | None = field(**limits(min=1, max=100_000))  # None: the TDP table
    # The cloud instance type, where DMI does not say it (Google Cloud, Azure): m5.large,
    # n2-standard-4, Standard_D16as_v4, or provider:type. None: from DMI where it says.
    instance_type: str | None


def tdp_table() -> dict[str, float]:
    """The bundled TDP table (carbonmeter.bundled/cpu_tdp.csv), read once."""
    return bundled_tdps()


def _make(settings: CpuConfig, ctx: ProbeContext) -> CpuModelProbe:
    return CpuModelProbe(ctx.paths, tdp_watts=settings.tdp_watts,
                         instance_type=settings.instance_type or "")


SPEC = ProbeSpec("cpu_model", order=100, make=_make, section="cpu", settings=CpuConfig,
                 replaces=frozenset({"cpu"}))
