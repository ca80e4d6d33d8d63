"""Estimated RAM power where no DRAM sensor covers the memory.

Memory power depends far more on how much is installed than on how busy it is, so
the estimate is a constant per GB: 3 W per 8 GB by default (the rule CodeCarbon
and Green Algorithms use, from DDR4 module datasheets).
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
        try:
            self.gb = installed_gb((paths.procfs / "meminfo").read_text())
        except (OSError, ValueError) as e:
            raise ProbeUnavailable(f"cannot read MemTotal from {paths.procfs / 'meminfo'}: "
                                   f"{e}") from None
        self.watts = self.gb * watts_per_gb
        self.devices = (Device("ram", "ram", self.name, f"{self.gb:.1f} GiB", estimated=True),)
        self._reading = Reading(self.devices[0], power_w=self.watts)

    def read(self) -> ProbeRead:
        return ProbeRead([self._reading], [])

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class RamConfig:
    """Section `ram`."""

    watts_per_gb: float = field(**limits(min=0, max=100))


def _make(settings: RamConfig, ctx: ProbeContext) -> RamModelProbe:
    return RamModelProbe(ctx.paths, watts_per_gb=settings.watts_per_gb)


SPEC = ProbeSpec("ram_model", order=110, make=_make, section="ram", settings=RamConfig,
                 replaces=frozenset({"dram"}))
