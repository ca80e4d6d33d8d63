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
from typing import Protocol

from carbonmeter.probes.base import BESIDE, Device, ProbeRead, ProbeUnavailable, Reading


class Declaration(Protocol):
    """One entry of `declared:` (carbonmeter.config.DeclaredDevice has these fields)."""

    id: str
    kind: str
    watts: float
    name: str | None


class DeclaredProbe:
    name = "declared"
    may_block = False  # see probes.base.Probe
    covers = frozenset()  # they stand beside the host: they replace no estimate

    def __init__(self, declarations: Iterable[Declaration]) -> None:
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
