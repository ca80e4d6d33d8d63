"""Units: figures as a person reads them, and the one conversion of grid intensities.

Display: three significant digits, in the unit that fits (J, Wh, kWh; mg, g, kg).
Intensity: grid data comes in many units — eGRID and WattTime publish lb/MWh, European
operators kg/MWh or g/kWh, some tools t/MWh. carbonmeter works in g/kWh only, so every figure
is converted once, where it enters, by the factors below.
"""

from __future__ import annotations

import math

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


J_PER_WH = 3600.0


def sig(x: float, digits: int = 3) -> str:
    """`x` to `digits` significant digits, never in exponent notation."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def energy(joules: float) -> str:
    """J below 1 Wh, Wh below 1 kWh, then kWh."""
    if abs(joules) < J_PER_WH:
        return f"{sig(joules)} J"
    if abs(joules) < 1000 * J_PER_WH:
        return f"{sig(joules / J_PER_WH)} Wh"
    return f"{sig(joules / J_PER_WH / 1000)} kWh"


def mass(grams: float) -> str:
    """CO2eq: mg below 1 g, g below 1 kg, then kg."""
    if abs(grams) < 1:
        return f"{sig(grams * 1000)} mg"
    if abs(grams) < 1000:
        return f"{sig(grams)} g"
    return f"{sig(grams / 1000)} kg"


def duration(seconds: float) -> str:
    """12.345 s; past a minute also h:mm:ss."""
    if seconds < 60:
        return f"{seconds:.3f} s"
    m, s = divmod(seconds, 60)
    h, m = divmod(int(m), 60)
    return f"{h}:{m:02d}:{s:04.1f} ({seconds:.1f} s)"


def plus_minus(error: float | None) -> str:
    """An error bar as people read it, in whole percent: `± 14 %`; "" where there is none.
    The error of an estimate is itself an estimate: more digits would claim what it cannot."""
    if error is None:
        return ""
    return f"± {error * 100:.0f} %" if error >= 0.01 else "± <1 %"
