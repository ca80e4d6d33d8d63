"""The same energy on other grids: what it would emit there, greenest first.

Only grids of the same kind are compared: a cloud region with the same provider's
regions (where the same job could run), anything else with countries. Emissions
elsewhere are the facility energy (energy × PUE) times that grid's intensity, so the
PUE of the site where the energy was spent is kept.

A grid is ranked only when its figure is precise enough to rank. Our World in Data
publishes a country's intensity as its emissions, rounded to 0.01 MtCO2eq, over its
generation: for a grid of G TWh the figure moves in steps of 10/G g/kWh, so the smallest
grids get figures that are mostly rounding (the Central African Republic's 0 g/kWh is
0.00 Mt over 0.15 TWh: anything from 0 to 33 g/kWh; its all-hydro mix is 26 g/kWh by the
per-source factors). Such a grid would lead "the greenest" for no reason but its size.
"""

from __future__ import annotations

from dataclasses import dataclass

from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import Region, regions


@dataclass(frozen=True, slots=True)
class Elsewhere:
    region: Region
    grams: float  # the same facility energy at this region's intensity
    saving_g: float  # what was emitted minus `grams`: positive when this grid is cleaner
    role: str = ""  # "configured", "greenest", "median", "dirtiest", or "" in a ranking


def region_of(intensity: Intensity) -> Region | None:
    """The bundled row an intensity came from, if it came from the bundled table.

    Codes of different kinds may coincide (a state "CA", the country Canada), so among the
    rows with its code the one of its provider, then of its exact value, then a country wins.
    """
    if intensity.provider in ("config", "default"):
        return None
    provider, _, code = intensity.region.casefold().rpartition("/")  # "aws/eu-west-3"
    rows = [r for r in regions() if r.code.casefold() == code
            and (not provider or (r.kind == "cloud" and r.provider == provider))]
    if not rows:
        return None
    return max(rows, key=lambda r: (r.provider == intensity.provider,
                                    r.g_per_kwh == intensity.g_per_kwh, r.kind == "country"))


def as_region(intensity: Intensity) -> Region:
    """The intensity in use as a row of the table (its own row when it has one)."""
    row = region_of(intensity)
    if row is not None:
        return row
    name = "world average" if intensity.provider == "default" else "configured intensity"
    return Region(intensity.region, "", name, intensity.provider, "", intensity.g_per_kwh,
                  intensity.year, intensity.source, {})


ROUNDING_MT = 0.01  # the precision of the emissions behind a country's published figure
PRECISION = 0.10  # rank a figure only when rounding moves it by at most this fraction


def rounding_g_per_kwh(r: Region) -> float | None:
    """How far rounding may have moved `r`'s figure (half a step), where it is known."""
    if r.kind != "country" or not r.total_twh:
        return None
    return ROUNDING_MT * 1e12 / (r.total_twh * 1e9) / 2  # Mt -> g, TWh -> kWh


def too_coarse(r: Region) -> bool:
    """True when rounding alone could move the figure by more than PRECISION of it."""
    half_step = rounding_g_per_kwh(r)
    return half_step is not None and half_step > PRECISION * r.g_per_kwh


def peers(row: Region | None) -> list[Region]:
    """The grids to compare with, greenest first (ties by code, so the order is stable);
    grids whose figure is too coarse to rank are left out."""
    if row is not None and row.kind == "cloud":
        pool = [r for r in regions() if r.kind == "cloud" and r.provider == row.provider]
    else:
        pool = [r for r in regions() if r.kind == "country" and not too_coarse(r)]
    return sorted(pool, key=lambda r: (r.g_per_kwh, r.code))


def _at(r: Region, facility_kwh: float, actual_g: float, role: str = "") -> Elsewhere:
    grams = facility_kwh * r.g_per_kwh
    return Elsewhere(r, grams, actual_g - grams, role)


def greenest(facility_kwh: float, actual_g: float, intensity: Intensity,
             n: int = 3) -> list[Elsewhere]:
    """The `n` grids, other than the one in use, where the same energy would emit least."""
    here = region_of(intensity)
    pool = [r for r in peers(here) if here is None or (r.code, r.provider) !=
            (here.code, here.provider)]
    return [_at(r, facility_kwh, actual_g) for r in pool[:n]]


def landmarks(facility_kwh: float, actual_g: float, intensity: Intensity) -> list[Elsewhere]:
    """The grid in use, then — among countries — the greenest, the median and the
    dirtiest; for a cloud region, every region of its provider, greenest first."""
    out = [Elsewhere(as_region(intensity), actual_g, 0.0, "configured")]
    return out + _others(facility_kwh, actual_g, region_of(intensity), [out[0].region])


def _others(facility_kwh: float, actual_g: float, here: Region | None,
            used: list[Region]) -> list[Elsewhere]:
    pool = peers(here)
    taken = {(r.code, r.provider) for r in used}
    if here is not None and here.kind == "cloud":
        return [_at(r, facility_kwh, actual_g) for r in pool if (r.code, r.provider) not in taken]
    if not pool:
        return []
    # the lower median (statistics.median_low, without that module's 6 ms import)
    median = sorted(r.g_per_kwh for r in pool)[(len(pool) - 1) // 2]
    middle = next(r for r in pool if r.g_per_kwh == median)
    return [_at(pool[0], facility_kwh, actual_g, "greenest"),
            _at(middle, facility_kwh, actual_g, "median"),
            _at(pool[-1], facility_kwh, actual_g, "dirtiest")]


def mixed(facility_kwh: float, actual_g: float,
          used: list[tuple[Intensity, float]]) -> list[Elsewhere]:
    """Energy spent on several grids (`used`: each intensity with its share of the facility
    energy, largest first): what it emitted as it ran, at the mean intensity; then all of it
    on each grid in use; then the landmarks of the grid that took most of it.

    With one grid this is `landmarks`. The comparison is on the energy, never on one row's
    intensity: 385 J half in France and half in Poland is neither France's figure nor Poland's.
    """
    if len(used) == 1:
        return landmarks(facility_kwh, actual_g, used[0][0])
    mean = actual_g / facility_kwh if facility_kwh > 0 else 0.0
    parts = ", ".join(f"{i.region} {share * 100:.3g} %" for i, share in used)
    run = Region("mixed", "", f"as run ({parts})", "mixed", "", round(mean, 1), None,
                 "the rows' own emissions over their energy", {})
    rows = [as_region(i) for i, _ in used]
    return [Elsewhere(run, actual_g, 0.0, "as run"),
            *(_at(r, facility_kwh, actual_g, "in use") for r in rows),
            *_others(facility_kwh, actual_g, region_of(used[0][0]), rows)]
