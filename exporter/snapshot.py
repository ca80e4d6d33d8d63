"""One immutable view of every total, replaced whole after each sample.

Readers (a scrape, an OTLP export) take `Sampler.latest` once and read only that
object, so what they publish is consistent and never waits on hardware.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import BESIDE, HOST, Device

if TYPE_CHECKING:
    from carbonmeter.attribution.view import AttributionView


@dataclass(frozen=True, slots=True)
class DeviceTotal:
    device: Device
    energy_j: float  # cumulative since the exporter's first reading of the device,
    # continued across restarts from the state file
    emissions_g: float  # cumulative CO2eq, PUE applied
    power_w: float | None  # over the last interval; None before two readings or when lost
    # seconds in which the device's energy could not be known (exporter down, stopped,
    # suspended, or the probe failing) and was therefore not counted
    unmeasured_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    name: str
    up: bool
    errors_total: int
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class ProviderStatus:
    """A live intensity provider as its last fetch left it."""

    name: str
    up: bool  # the last fetch succeeded
    errors_total: int
    value: Intensity | None  # the last good value; None before the first
    age_seconds: float | None  # how old `value` is
    last_error: str = ""
    value_unix: float | None = None  # when `value` was current (Unix time)


@dataclass(frozen=True, slots=True)
class EmbodiedTotal:
    device: str  # the name configured under embodied.devices
    grams: float  # embodied CO2eq accrued while the exporter ran


@dataclass(frozen=True, slots=True)
class Snapshot:
    seq: int  # increases with every sample; lets readers cache what they render
    taken_unix: float
    devices: tuple[DeviceTotal, ...]
    host_energy_j: float
    host_power_w: float | None
    host_emissions_g: float
    intensity: Intensity
    pue: float
    probes: tuple[ProbeStatus, ...]
    taken_monotonic: float = 0.0  # the same instant on the monotonic clock, for durations
    providers: tuple[ProviderStatus, ...] = ()
    embodied: tuple[EmbodiedTotal, ...] = ()
    attribution: AttributionView | None = None  # workloads' shares, when attribution is on
    # A whole-host meter runs (decided once, at discovery): the host totals are that meter
    # and what is beside the host, not the sum of every device (see `counted`).
    metered: bool = False
    # the part of host_energy_j that models estimated (estimated devices among those
    # counted), so the host series say how much of them is not measured
    host_estimated_energy_j: float = 0.0


class _OnDevice(Protocol):
    @property
    def device(self) -> Device: ...


T = TypeVar("T", bound=_OnDevice)


def counted(rows: Iterable[T], *, metered: bool) -> list[T]:
    """The rows that make the host total: the host rule, for snapshots and spans alike.

    Without a whole-host meter the host is the sum of its devices: they never overlap (RAPL
    drops subzones and mirrors, psys replaces package + DRAM, hwmon skips rails inside
    others). With one (IPMI, Redfish, an ACPI power meter) the meter is the host, and the
    devices inside it are a breakdown that is not added again; devices beside the host (a
    declared switch) are added in both cases.
    """
    if not metered:
        return list(rows)
    return [r for r in rows if r.device.scope in (HOST, BESIDE)]


def host_estimated(totals: Iterable[DeviceTotal], *, metered: bool) -> float:
    """The estimated part of the host's energy: the estimated devices among those counted."""
    return sum((t.energy_j for t in counted(totals, metered=metered) if t.device.estimated), 0.0)


def host_totals(totals: Iterable[DeviceTotal], *, metered: bool,
                ) -> tuple[float, float | None, float]:
    """The host's energy, power and emissions. With a meter that was silent this interval,
    the host's power is unknown (not the power of what is beside it)."""
    rows = counted(totals, metered=metered)
    powers = [t.power_w for t in rows if t.power_w is not None]
    if metered and not any(t.power_w is not None for t in rows if t.device.scope == HOST):
        powers = []
    return (sum(t.energy_j for t in rows), sum(powers) if powers else None,
            sum(t.emissions_g for t in rows))
