"""Figures as a person reads them: three significant digits, in the unit that fits."""

from __future__ import annotations

import math

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
