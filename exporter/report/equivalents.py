"""Emissions and energy in things a person knows, each factor with where it comes from."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Factor:
    what: str  # "km driven ..." — the thing counted
    per: float  # one of them per this many grams CO2eq, or kWh
    basis: str  # "grams" (of CO2eq) or "kwh" (of energy)
    source: str


FACTORS = (
    Factor("km driven by an average new car in Europe", 108.1, "grams",
           "108.1 gCO2/km: average of new passenger cars registered in the EU, Iceland and "
           "Norway in 2022, WLTP type approval (European Environment Agency, CO2 emissions "
           "from new passenger cars, final 2022 data)"),
    Factor("full smartphone charges", 0.0116, "kwh",
           "11.6 Wh per charge: 14.46 Wh drawn in 24 h less 22 h x 0.13 W kept topped up "
           "(US EPA Greenhouse Gas Equivalencies Calculator, calculations and references, "
           "after US DOE 2020 certification data)"),
)


def equivalents(grams: float, kwh: float) -> list[tuple[Factor, float]]:
    """How many of each thing the same emissions (car) or energy (phone) amount to."""
    return [(f, (grams if f.basis == "grams" else kwh) / f.per) for f in FACTORS]


def describe(f: Factor, n: float) -> tuple[str, str]:
    """(how many, of what) for a person: metres rather than 0.00123 km."""
    from carbonmeter.units import sig

    if f.what.startswith("km ") and n < 1:
        return sig(n * 1000), "m" + f.what[2:]
    return sig(n), f.what
