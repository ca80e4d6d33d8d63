"""Units of carbon intensity, and the one conversion to gCO2eq/kWh everything else uses.

Grid data comes in many units: eGRID and WattTime publish lb/MWh, European operators kg/MWh or
g/kWh, some tools t/MWh. carbonmeter works in g/kWh only, so every figure is converted once,
where it enters, by the factor below.
"""

from __future__ import annotations

LB_IN_KG = 0.45359237  # exact, by the 1959 international yard and pound agreement

# Unit name (as configured) -> factor to gCO2eq/kWh. kg/MWh = 1000 g / 1000 kWh = g/kWh.
G_PER_KWH = {
    "g_per_kwh": 1.0,
    "kg_per_mwh": 1.0,
    "g_per_mwh": 0.001,
    "kg_per_kwh": 1000.0,
    "t_per_mwh": 1000.0,
    "lb_per_mwh": LB_IN_KG,
    "lb_per_kwh": LB_IN_KG * 1000.0,
}
UNITS = tuple(G_PER_KWH)


def to_g_per_kwh(value: float, unit: str) -> float:
    """`value` in `unit` as gCO2eq/kWh; KeyError for a unit not in UNITS."""
    return value * G_PER_KWH[unit]
