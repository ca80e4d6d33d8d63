"""One immutable view of every total, replaced whole after each sample.

Readers (a scrape, an OTLP export) take `Sampler.latest` once and read only that
object, so what they publish is consistent and never waits on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.carbon import Intensity
from probes.base import Device


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
