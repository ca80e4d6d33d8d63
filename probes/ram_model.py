"""Estimated RAM power where no DRAM sensor covers the memory.

Memory power depends far more on how much is installed than on how busy it is, so the
estimate is a constant per GB: 0.1 W per GB by default, the figure of the server power model
(`carbonmeter.probes.power_model`). The classic 3 W per 8 GB came from DDR3-era modules; on
the SPECpower servers published since 2015 it alone exceeds the whole server's measured idle
power for 40 % of them. A container is priced by its memory limit, else its share of the
machine's memory (see `cpu_model.machine_pricing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from carbonmeter.probes.cpu_model import estimate_machine, machine_pricing
from carbonmeter.probes.machine import detect


def installed_gb(meminfo: str) -> float:
    """MemTotal from /proc/meminfo, in GiB (the kernel counts kB of 1024 bytes)."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1024 * 1024)
    raise ValueError("no MemTotal line")


class RamModelProbe(Probe):
    name = "ram_model"
    may_block = False  # nothing is read after start
    covers = frozenset({"dram"})

    def __init__(self, paths: Paths, *, watts_per_gb: float) -> None:
        machine = detect(paths)
        if machine.memory_gb is None:
            raise ProbeUnavailable(f"cannot read MemTotal from {paths.procfs / 'meminfo'}")
        pricing = machine_pricing(machine)
        self.gb = pricing.memory_gb
        self.watts = self.gb * watts_per_gb
        self._error = estimate_machine(machine, 0.0).error
        self._notes = (f"{self.gb:.1f} GiB x {watts_per_gb:g} W/GB ({pricing.basis})",
                       f"error bar: ± {sum(self._error) / 2 * 100:.0f} % (the mean of the "
                       "machine's idle and full-load error bars)")
        self.devices = (Device("ram", "ram", self.name, f"{self.gb:.1f} GiB", estimated=True,
                               error=self._error, power_range_w=(self.watts, self.watts)),)
        self._reading = Reading(self.devices[0], power_w=self.watts)

    def read(self) -> ProbeRead:
        return ProbeRead([self._reading], [])

    def close(self) -> None:
        pass

    def notes(self) -> tuple[str, ...]:
        return self._notes


@dataclass(frozen=True)
class RamConfig:
    """Section `ram`."""

    watts_per_gb: float = field(**limits(min=0, max=100))


def _make(settings: RamConfig, ctx: ProbeContext) -> RamModelProbe:
    return RamModelProbe(ctx.paths, watts_per_gb=settings.watts_per_gb)


SPEC = ProbeSpec("ram_model", order=110, make=_make, section="ram", settings=RamConfig,
                 replaces=frozenset({"dram"}))
