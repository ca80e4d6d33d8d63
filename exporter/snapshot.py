"""One immutable view of every total, replaced whole after each sample.

Readers (a scrape, an OTLP export) take `Sampler.latest` once and read only that
object, so what they publish is consistent and never waits on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import Device

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
