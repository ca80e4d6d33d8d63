"""Per-device cumulative energy and emissions, exact across counter wraps.

Counter sources add the counter's increase; power sources are integrated over the
monotonic time between reads. Each interval's energy is priced at the intensity
that held then, so emissions are Σ ΔE × PUE × C(t) and never rewritten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from exporter.carbon import Intensity, grams
from exporter.snapshot import DeviceTotal
from probes.base import Device, Reading

log = logging.getLogger(__name__)


def counter_delta_uj(prev: int, now: int, wrap_uj: float | None) -> float | None:
    """Increase of a hardware energy counter between two reads, in µJ.

    A counter that reads lower than before wrapped once (it restarts from zero after
    `wrap_uj`): the increase is what was left to the wrap plus what it counted since.
    Two wraps between reads are undetectable, which is why the sampling interval must
    stay below one wrap period (about 60 s at 4 kW for a 262 kJ RAPL range). A counter
    without a wrap that goes back was reset (driver reload): None, nothing is counted.
    """
    if now >= prev:
        return float(now - prev)
    if wrap_uj is None:
        return None
    return (wrap_uj - prev) + now


@dataclass(frozen=True, slots=True)
class EnergyDelta:
    """What one device spent between its last two readings: for sharing it out."""

    device: Device
    energy_j: float
    seconds: float


@dataclass(slots=True)
class _Track:
    device: Device
    energy_j: float = 0.0
    emissions_g: float = 0.0
    power_w: float | None = None
    counter: int | None = None
    power: float | None = None
    t: float | None = None  # monotonic time of the last reading


class Accounting:
    """Totals for every device ever seen, in first-seen order."""

    def __init__(self, pue: float) -> None:
        self.pue = pue
        self._tracks: dict[str, _Track] = {}

    def add(self, reading: Reading, t: float, intensity: Intensity) -> EnergyDelta | None:
        """Fold one reading taken at monotonic time `t` into its device's totals; returns the
        energy it added, if any."""
        dev = reading.device
        tr = self._tracks.get(dev.id)
        if tr is None or tr.device != dev:
            tr = self._tracks.setdefault(dev.id, _Track(dev))
            tr.device = dev
        dt = None if tr.t is None else t - tr.t
        if dt is not None and dt <= 0:
            return  # same instant twice: nothing elapsed, nothing to add
        energy = None
        if reading.counter_uj is not None:
            if tr.counter is not None:
                delta = counter_delta_uj(tr.counter, reading.counter_uj, dev.wrap_uj)
                if delta is None:
                    log.warning("%s: energy counter went back from %d to %d µJ (driver "
                                "reset?); counting from the new value", dev.id, tr.counter,
                                reading.counter_uj)
                else:
                    energy = delta / 1e6
            tr.counter = reading.counter_uj
        elif reading.power_w is not None:
            if tr.power is not None and dt is not None:
                mean = reading.power_w if dev.mean_power else (tr.power + reading.power_w) / 2
                energy = mean * dt
            tr.power = reading.power_w
        tr.t = t
        if energy is None or dt is None:
            return
        tr.energy_j += energy
        tr.emissions_g += grams(energy, self.pue, intensity)
        tr.power_w = energy / dt
        return EnergyDelta(dev, energy, dt)

    def lost(self, device_id: str) -> None:
        """A device that was not read: its power is unknown until it is read twice again."""
        tr = self._tracks.get(device_id)
        if tr is not None:
            tr.power_w = None
            tr.t = None
            tr.power = None

    def integrates_power(self) -> bool:
        """True when some device reports power, whose energy depends on how often it is read."""
        return any(t.power is not None for t in self._tracks.values())

    def totals(self) -> tuple[DeviceTotal, ...]:
        return tuple(DeviceTotal(t.device, t.energy_j, t.emissions_g, t.power_w)
                     for t in self._tracks.values())
