"""Embodied emissions: making the hardware emitted CO2eq too, spread over its lifetime.

The Software Carbon Intensity specification (Green Software Foundation, ISO/IEC 21031:2024)
adds to operational emissions O a share M of the hardware's embodied emissions, in
proportion to the time the software reserved it: M = TE x (time reserved / expected
lifespan). An exporter runs all the time its host runs, so each configured part accrues
kgCO2eq x 1000 / lifetime grams per second of the exporter's runtime, on the monotonic clock.
"""

from __future__ import annotations

from carbonmeter.config import HardwareConfig
from carbonmeter.snapshot import EmbodiedTotal

SECONDS_PER_YEAR = 365.25 * 86_400  # Julian year, as lifetimes are quoted in years


def grams_per_second(hw: HardwareConfig) -> float:
    return hw.kg_co2eq * 1000.0 / (hw.lifetime_years * SECONDS_PER_YEAR)


class Embodied:
    """Running totals per configured part; advanced by the sampler on each sample."""

    def __init__(self, devices: dict[str, HardwareConfig]) -> None:
        self.rates = {name: grams_per_second(hw) for name, hw in devices.items()}
        self.grams = dict.fromkeys(devices, 0.0)
        self._t: float | None = None

    def advance(self, t: float) -> None:
        """Accrue the time since the last call (monotonic seconds `t`)."""
        if self._t is not None and t > self._t:
            dt = t - self._t
            for name, rate in self.rates.items():
                self.grams[name] += rate * dt
        if self._t is None or t > self._t:
            self._t = t

    def restore(self, grams: dict[str, float]) -> None:
        """Continue the totals of a checkpoint, for the parts still configured. The time the
        exporter was down accrues nothing, as it measured nothing (see unmeasured seconds)."""
        for name, g in grams.items():
            if name in self.grams:
                self.grams[name] += g

    def totals(self) -> tuple[EmbodiedTotal, ...]:
        return tuple(EmbodiedTotal(name, g) for name, g in self.grams.items())
