"""Estimated power of the rest of the server: power supply losses, fans, board, disks.

Where no whole-host meter runs (IPMI, Redfish, an ACPI power meter), the parts a host
reports (CPU, memory, GPUs) leave out what the wall still draws. The server power model
(`carbonmeter.probes.power_model`, fitted on SPECpower wall power) prices it per socket on
bare metal, linear in load, and as the per-thread share of its generation's platform for a
guest or a CPU-limited container. It stands down where a whole-host meter or RAPL's psys
zone measures the platform, and `probes.disabled: [platform_model]` turns it off.
"""

from __future__ import annotations

from carbonmeter.probes.base import HOST, Paths, ProbeContext, ProbeSpec
from carbonmeter.probes.cpu_model import CpuConfig, LoadModelProbe
from carbonmeter.probes.power_model import PowerModel


class PlatformModelProbe(LoadModelProbe):
    name = "platform_model"
    part = "platform"
    covers = frozenset({"platform"})

    def __init__(self, paths: Paths, *, instance_type: str = "",
                 model: PowerModel | None = None) -> None:
        super().__init__(paths, instance_type=instance_type, model=model)

    def device_name(self) -> str:
        return "rest of the server (power supply losses, fans, board, disks)"


def _make(settings: CpuConfig, ctx: ProbeContext) -> PlatformModelProbe:
    return PlatformModelProbe(ctx.paths, instance_type=settings.instance_type or "")


# Shares the `cpu` section: the instance type decides the generation for both estimates.
SPEC = ProbeSpec("platform_model", order=120, make=_make, section="cpu", settings=CpuConfig,
                 replaces=frozenset({HOST, "platform"}))
