"""Devices that draw a constant power nothing measures, declared in the configuration:
a network switch, a disk shelf, the share of a PDU.

They are neither measured nor modelled from load: the number is what the operator states
(a nameplate or a measurement made once). They are marked estimated (`source="declared"`
tells them apart from the load models) and accounted beside the host (scope beside): their
energy is added to the host total even when a whole-server meter measures the host, since
such a meter does not see them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from carbonmeter.probes.base import (
    BESIDE,
    KINDS,
    Device,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
    limits,
)


@dataclass(frozen=True)
class DeclaredDevice:
    """One entry of the top-level `declared:` list."""

    id: str = field(**limits(check="device_id"))
    kind: str = field(**limits(choices=KINDS))
    watts: float = field(**limits(min=0, max=1_000_000))
    name: str | None = None


class DeclaredProbe(Probe):
    name = "declared"
    may_block = False  # nothing is read
    covers = frozenset()  # they stand beside the host: they replace no estimate

    def __init__(self, declarations: Iterable[DeclaredDevice]) -> None:
        self._readings = [
            Reading(Device(d.id, d.kind, self.name, name=d.name or d.id, estimated=True,
                           mean_power=True, scope=BESIDE), power_w=float(d.watts))
            for d in declarations]
        if not self._readings:
            raise ProbeUnavailable("no devices in the configuration's declared: list")
        self.devices = tuple(r.device for r in self._readings)
        self.modes = {r.device.id: f"{r.power_w:g} W, declared" for r in self._readings}

    def read(self) -> ProbeRead:
        return ProbeRead(list(self._readings), [])

    def close(self) -> None:
        pass


def _make(settings: list[DeclaredDevice], ctx: ProbeContext) -> DeclaredProbe:
    return DeclaredProbe(settings)


SPEC = ProbeSpec("declared", order=90, make=_make, section="declared",
                 settings=list[DeclaredDevice])
