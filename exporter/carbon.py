"""Carbon intensity: how many grams of CO2eq one kWh emits where the energy is spent.

The sources resolve once from configuration; `IntensitySource.current()` is asked once
per sample, so a source whose value changes over time (a schedule, exporter.schedule; a
live grid API, exporter.providers) prices each interval at the intensity that held when
it was spent.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Protocol

from exporter.config import Carbon, ConfigError

log = logging.getLogger(__name__)

WORLD_AVERAGE_G_PER_KWH = 475.0  # IEA, Global Energy & CO2 Status Report 2019
WORLD_AVERAGE_SOURCE = "IEA Global Energy & CO2 Status Report 2019, world average"
J_PER_KWH = 3.6e6


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


class IntensitySource(Protocol):
    def current(self) -> Intensity: ...


@dataclass(frozen=True, slots=True)
class Static:
    """An intensity that does not change while the process runs."""

    intensity: Intensity

    def current(self) -> Intensity:
        return self.intensity


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    alpha3: str
    name: str
    kind: str
    provider: str
    g_per_kwh: float
    year: int | None
    source: str
    mix: dict[str, float]


@cache
def regions() -> tuple[Region, ...]:
    """The bundled region table, read once."""
    text = resources.files("exporter.bundled").joinpath("regions.csv").read_text("utf-8")
    rows = csv.DictReader(io.StringIO("".join(
        line for line in text.splitlines(keepends=True) if not line.startswith("#"))))
    fixed = {"code", "alpha3", "name", "kind", "provider", "intensity_g_per_kwh", "year",
             "source", "total_twh"}
    out = []
    for r in rows:
        out.append(Region(
            code=r["code"], alpha3=r.get("alpha3") or "", name=r["name"], kind=r["kind"],
            provider=r.get("provider") or "", g_per_kwh=float(r["intensity_g_per_kwh"]),
            year=int(r["year"]) if r.get("year") else None, source=r["source"],
            mix={k: float(v) for k, v in r.items() if k not in fixed and v not in ("", None)},
        ))
    return tuple(out)


GRID_KINDS = ("country", "state", "province", "zone")  # lookup order: a country wins a name


@cache
def _grid_index() -> dict[str, Region]:
    """Every grid region by code, alpha-3 and name, casefolded; built once."""
    index: dict[str, Region] = {}
    for kind in GRID_KINDS:
        for r in regions():
            if r.kind == kind:
                for k in (r.code, r.alpha3, r.name):
                    if k:
                        index.setdefault(k.casefold(), r)
    return index


def find_region(name: str) -> Region:
    """A grid region, any case: a country by ISO 3166-1 alpha-2 or alpha-3 code or by name;
    a US state or Canadian province by ISO 3166-2 code (US-CA, CA-QC) or name; a Nordic
    bidding zone (SE3). A name that is both a country and a state (Georgia) is the country."""
    key = name.strip().casefold()
    index = _grid_index()
    found = index.get(key)
    if found is not None:
        return found
    clouds = [r for r in regions() if r.kind == "cloud" and r.code.casefold() == key]
    if clouds:
        r = clouds[0]
        raise ConfigError(f"carbon.region: '{name}' is a cloud region of {r.provider}; use "
                          f"carbon.cloud: {{provider: {r.provider}, region: {r.code}}}")
    choices = {k: f"{r.code} ({r.name})" for k, r in index.items()}
    close = difflib.get_close_matches(key, list(choices), n=4, cutoff=0.6)
    hint = ", ".join(dict.fromkeys(choices[c] for c in close))
    raise ConfigError(f"carbon.region: unknown region '{name}'"
                      + (f"; close matches: {hint}" if hint else "")
                      + "; use an ISO 3166 country code such as FR or FRA, a US state or "
                      "Canadian province such as US-CA or CA-QC, or a Nordic bidding zone such "
                      "as SE3 (`carbonmeter regions` lists them)")


def find_cloud(provider: str, region: str) -> Region:
    """A cloud region by its provider's name for it (eu-west-3, westeurope), any case."""
    key = region.strip().casefold()
    rows = [r for r in regions() if r.kind == "cloud" and r.provider == provider]
    for r in rows:
        if r.code.casefold() == key:
            return r
    close = difflib.get_close_matches(key, [r.code.casefold() for r in rows], n=4, cutoff=0.6)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    raise ConfigError(f"carbon.cloud: unknown {provider} region '{region}'{hint}; "
                      f"`carbonmeter regions --provider {provider}` lists them")


def mix_intensity(mix: dict[str, float], per_source: dict[str, float]) -> float:
    """Weighted average of the sources' intensities; shares need not sum to 1."""
    total = sum(mix.values())
    return sum(share * per_source[src] for src, share in mix.items()) / total


def resolve(cfg: Carbon) -> IntensitySource:
    """The configured intensity without live providers, which fall back to it: a fixed
    value, else a schedule, else a mix, else a cloud or grid region, else the world."""
    region = cfg.region
    grid = find_region(region) if region is not None else None  # unknown names fail here
    cloud = find_cloud(cfg.cloud.provider, cfg.cloud.region) if cfg.cloud is not None else None
    if cfg.intensity_g_per_kwh is not None:
        return Static(Intensity(cfg.intensity_g_per_kwh, region or "custom", "config",
                                "carbon.intensity_g_per_kwh in the configuration"))
    if cfg.schedule is not None:
        from exporter.schedule import Schedule

        label = (grid.code if grid else f"{cloud.provider}/{cloud.code}" if cloud
                 else "schedule")
        return Schedule(cfg.schedule, region=label)
    if cfg.mix is not None:
        missing = sorted(set(cfg.mix) - set(cfg.source_intensities))
        if missing:
            raise ConfigError(f"carbon.mix: no intensity for {', '.join(missing)}; "
                              "add them under carbon.source_intensities")
        value = mix_intensity(cfg.mix, cfg.source_intensities)
        return Static(Intensity(round(value, 3), region or "custom", "config",
                                "carbon.mix weighted by carbon.source_intensities"))
    if cloud is not None:
        return Static(Intensity(cloud.g_per_kwh, f"{cloud.provider}/{cloud.code}", "bundled",
                                cloud.source, cloud.year))
    if grid is not None:
        return Static(Intensity(grid.g_per_kwh, grid.code, "bundled", grid.source, grid.year))
    return Static(Intensity(WORLD_AVERAGE_G_PER_KWH, "world", "default", WORLD_AVERAGE_SOURCE,
                            2019))


def grams(energy_j: float, pue: float, intensity: Intensity) -> float:
    """CO2eq for energy spent at one intensity: E (kWh) x PUE x C (g/kWh)."""
    return energy_j / J_PER_KWH * pue * intensity.g_per_kwh
