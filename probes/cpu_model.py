"""Estimated CPU power where no sensor can be read: TDP x a load curve.

The curve comes from SPECpower_ssj2008 results of real servers, as summarised by
Teads Engineering (B. Davy, "Building an AWS EC2 carbon emissions dataset", 2021):
a package draws 12 % of its TDP idle, 32 % at 10 % load, 75 % at 50 % and 102 % at
full load. Power rises steeply at low load (cores leave deep C-states and turbo
up) and flattens after, which a cubic such as TDP x (0.1 + 0.9 load³) misses: that
one puts 50 % load at 21 % of TDP where servers measure about 75 %.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

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

log = logging.getLogger(__name__)

# (load, share of TDP): SPECpower_ssj2008 via Teads (2021), linear between points.
LOAD_CURVE = ((0.0, 0.12), (0.10, 0.32), (0.50, 0.75), (1.00, 1.02))
DEFAULT_TDP_PER_SOCKET_W = 85.0  # the median desktop/server TDP; used when all else fails


def estimate_cpu_watts(tdp_watts: float, load: float, *, threads: int | None = None) -> float:
    """Estimated package power at a CPU utilisation `load` (0..1) of all logical CPUs.

    `threads` is the number of logical CPUs behind `load`, when the caller knows it.
    The curve was measured with SMT on, on the OS's own utilisation, so it needs no
    per-thread correction; `threads` only bounds `load` to what that many CPUs can
    show: utilisation read as busy/total jiffies can overshoot 1 (or dip below 0)
    by a jiffy per CPU when /proc/stat is read while counters tick, and such a
    reading is clamped rather than extrapolated past the measured curve.
    """
    if tdp_watts < 0:
        raise ValueError(f"tdp_watts must be >= 0, got {tdp_watts}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    slack = 0.0 if threads is None else 1.0 / (100 * threads)  # one jiffy per CPU per s
    if not -slack - 1e-9 <= load <= 1.0 + slack + 1e-9 and threads is not None:
        raise ValueError(f"load {load} is outside 0..1 for {threads} threads")
    load = min(1.0, max(0.0, load))
    for (x0, y0), (x1, y1) in itertools.pairwise(LOAD_CURVE):
        if load <= x1:
            return tdp_watts * (y0 + (y1 - y0) * (load - x0) / (x1 - x0))
    return tdp_watts * LOAD_CURVE[-1][1]


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


class CpuModelProbe(Probe):
    """One estimated device for all CPU packages, fed by /proc/stat utilisation."""

    name = "cpu_model"
    may_block = False  # /proc/stat is the kernel's memory: a read never waits
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

    def notes(self) -> tuple[str, ...]:
        return (f"TDP {self.tdp_watts:g} W ({self.tdp_note})",)

    def idle_watts(self) -> dict[str, float]:
        return {d.id: estimate_cpu_watts(self.tdp_watts, 0.0) for d in self.devices}


@dataclass(frozen=True)
class CpuConfig:
    """Section `cpu`: the estimate's inputs where no sensor measures the CPU."""

    tdp_watts: float | None = field(**limits(min=1, max=100_000))  # None: the TDP table


@functools.cache  # read once per process: `track()` may discover probes many times
def tdp_table() -> dict[str, float]:
    """The bundled TDP table (carbonmeter.bundled/cpu_tdp.csv)."""
    from importlib import resources

    from carbonmeter.probes.cpu_names import parse_tdp_table

    return parse_tdp_table(
        resources.files("carbonmeter.bundled").joinpath("cpu_tdp.csv").read_text("utf-8"))


def _make(settings: CpuConfig, ctx: ProbeContext) -> CpuModelProbe:
    tdp = settings.tdp_watts
    return CpuModelProbe(ctx.paths, tdp_watts=tdp, tdp_table=None if tdp else tdp_table())


SPEC = ProbeSpec("cpu_model", order=100, make=_make, section="cpu", settings=CpuConfig,
                 replaces=frozenset({"cpu"}))
