"""The intensity type: how many grams of CO2eq one kWh emits, and where that figure comes from.

Everything that prices energy (accounting, attribution, the snapshot) depends on this module
alone, which loads no file and no configuration. Where a figure comes from — the bundled
tables, a schedule, a live grid API — is decided above it (`carbonmeter.carbon.resolve`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

WORLD_AVERAGE_G_PER_KWH = 475.0  # IEA, Global Energy & CO2 Status Report 2019
WORLD_AVERAGE_SOURCE = "IEA Global Energy & CO2 Status Report 2019, world average"
J_PER_KWH = 3.6e6
# No grid emits more (coal plants run about 1,000 g/kWh): a larger figure is a unit mistake
# or a broken source. The configuration refuses the same.
MAX_G_PER_KWH = 5000.0


@dataclass(frozen=True, slots=True)
class Intensity:
    """An intensity and where it comes from, as the metrics and reports label it."""

    g_per_kwh: float
    region: str  # "FR", "world", "custom"
    provider: str  # "bundled", "config", "default", or a live provider's name
    source: str  # citation a person can look up
    year: int | None = None
    # "average": the grid's mean emissions per kWh (every bundled table, most APIs);
    # "marginal": what one more kWh emits now (WattTime's MOER). Not interchangeable.
    signal: str = "average"


def unbelievable(g_per_kwh: object) -> str | None:
    """Why `g_per_kwh` cannot price energy (not a finite number from 0 to MAX_G_PER_KWH),
    or None. Live figures are checked with it after any unit conversion."""
    if type(g_per_kwh) not in (int, float) or not math.isfinite(g_per_kwh) \
            or not 0 <= g_per_kwh <= MAX_G_PER_KWH:  # type: ignore[operator]
        return f"{g_per_kwh!r} gCO2eq/kWh is outside 0 to {MAX_G_PER_KWH:g}"
    return None


class IntensitySource(Protocol):
    """Asked once per sample, so a figure that changes over time (a schedule, a live grid
    API) prices each interval at the intensity that held when it was spent."""

    def current(self) -> Intensity: ...


@dataclass(frozen=True, slots=True)
class Static:
    """An intensity that does not change while the process runs."""

    intensity: Intensity

    def current(self) -> Intensity:
        return self.intensity


def grams(energy_j: float, pue: float, intensity: Intensity) -> float:
    """CO2eq for energy spent at one intensity: E (kWh) x PUE x C (g/kWh)."""
    return energy_j / J_PER_KWH * pue * intensity.g_per_kwh
