"""Estimated power of the rest of the server: power supply losses, fans, board, disks.

Where no whole-host meter runs (IPMI, Redfish, an ACPI power meter), the parts a host
reports (CPU, memory, GPUs) leave out what the wall still draws. The server power model
(`carbonmeter.probes.power_model`, fitted on SPECpower wall power) prices it per socket on
bare metal, linear in load, and as the per-thread share of its generation's platform for a
guest or a CPU-limited container. It stands down where a whole-host meter or RAPL's psys
zone measures the platform, and `probes.disabled: [platform_model]` turns it off.
"""

from __future__ import annotations

from carbonmeter.probes.base import (
    HOST,
    Device,
    Paths,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    Reading,
)
from carbonmeter.probes.cpu_model import (
    CpuConfig,
    LoadMeter,
    describe,
    estimate_machine,
    fork_load,
)
from carbonmeter.probes.machine import detect
from carbonmeter.probes.power_model import PowerModel, bundled_model


class PlatformModelProbe(Probe):
    name = "platform_model"
    may_block = False  # /proc/stat and cgroup files are the kernel's memory
    covers = frozenset({"platform"})

    def __init__(self, paths: Paths, *, instance_type: str = "",
                 model: PowerModel | None = None) -> None:
        self.machine = detect(paths, instance_type=instance_type)
        m = model or bundled_model()
        self.idle = estimate_machine(self.machine, 0.0, model=m)
        self.full = estimate_machine(self.machine, 1.0, model=m)
        self._lo, self._hi = self.idle.parts["platform"], self.full.parts["platform"]
        self._load = LoadMeter(paths, self.machine)
        self.devices = (Device(
            "platform", "platform", self.name,
            "rest of the server (power supply losses, fans, board, disks)", estimated=True,
            mean_power=True, error=self.idle.error, power_range_w=(self._lo, self._hi)),)

    def read(self) -> ProbeRead:
        try:
            load = self._load.read()
        except (OSError, ValueError, IndexError) as e:
            return ProbeRead([], [f"platform: cannot read the load: {e}"])
        return ProbeRead([Reading(self.devices[0],
                                  power_w=self._lo + (self._hi - self._lo) * load)], [])

    def close(self) -> None:
        self._load.close()

    def reader(self) -> PlatformModelProbe:
        """The same estimate over a load meter of its own: the load is per reader."""
        return fork_load(self)

    def notes(self) -> tuple[str, ...]:
        return describe(self.machine, self.idle, self.full, "platform", self._load.source)

    def idle_watts(self) -> dict[str, float]:
        return {self.devices[0].id: self._lo}


def _make(settings: CpuConfig, ctx: ProbeContext) -> PlatformModelProbe:
    return PlatformModelProbe(ctx.paths, instance_type=settings.instance_type or "")


# Shares the `cpu` section: the instance type decides the generation for both estimates.
SPEC = ProbeSpec("platform_model", order=120, make=_make, section="cpu", settings=CpuConfig,
                 replaces=frozenset({HOST, "platform"}))
