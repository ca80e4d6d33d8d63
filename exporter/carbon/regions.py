"""The bundled region table: every grid and cloud region with its intensity, year and source.

Read once from `carbonmeter.bundled/regions.csv` (derived from the reference data by
`config/sources/derive.py`, each row citing its source).
"""

from __future__ import annotations

import csv
import difflib
import io
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources

from carbonmeter.config import ConfigError


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
    total_twh: float | None = None  # the grid's yearly generation, where the source gives it


@cache
def regions() -> tuple[Region, ...]:
    """The bundled region table, read once."""
    text = resources.files("carbonmeter.bundled").joinpath("regions.csv").read_text("utf-8")
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
            total_twh=float(r["total_twh"]) if r.get("total_twh") else None,
        ))
    return tuple(out)


GRID_KINDS = ("country", "state", "province", "zone")  # lookup order: a country wins a name


def fold(text: str) -> str:
    """Text for matching: any case, accents optional ("Québec", "QUEBEC" and "quebec" agree;
    "Zürich" is "zurich"). Sources spell names with or without accents, users too."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def search_rows(text: str, rows: tuple[Region, ...]) -> tuple[Region, ...]:
    """The rows whose code, alpha-3, name, kind or provider contain every word of `text`."""
    words = fold(text).split()
    return tuple(r for r in rows if all(
        w in fold(f"{r.code} {r.alpha3} {r.name} {r.kind} {r.provider}") for w in words))


@cache
def _grid_index() -> dict[str, Region]:
    """Every grid region by code, alpha-3 and name, folded; built once."""
    index: dict[str, Region] = {}
    for kind in GRID_KINDS:
        for r in regions():
            if r.kind == kind:
                for k in (r.code, r.alpha3, r.name):
                    if k:
                        index.setdefault(fold(k), r)
    return index


def find_region(name: str) -> Region:
    """A grid region, any case: a country by ISO 3166-1 alpha-2 or alpha-3 code or by name;
    a US state, Canadian or Chinese province by ISO 3166-2 code (US-CA, CA-QC, CN-SC) or name;
    a Nordic bidding zone (SE3). A name that is both a country and a state (Georgia) is the
    country."""
    key = fold(name.strip())
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
                      + "; use an ISO 3166 country code such as FR or FRA, a US state, Canadian "
                      "or Chinese province such as US-CA, CA-QC or CN-SC, or a Nordic bidding "
                      "zone such as SE3 (`carbonmeter regions` lists them)")


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


def select(search: str | None = None, provider: str | None = None) -> tuple[Region, ...]:
    """`carbonmeter regions [--search TEXT] [--provider P]`: P a cloud provider or a kind."""
    rows = regions()
    if provider:
        rows = tuple(r for r in rows if (r.provider or r.kind) == provider)
    return search_rows(search, rows) if search else rows


def listing(rows: tuple[Region, ...]) -> str:
    """The rows as an aligned table: provider or kind, code, name, intensity, year, source."""
    table = [(r.provider or r.kind, r.code, r.name[:44], f"{r.g_per_kwh:.1f}",
              str(r.year or "-"), r.source) for r in rows]
    head = ("provider", "code", "name", "gCO2eq/kWh", "year", "source")
    widths = [max(len(row[i]) for row in [head, *table]) for i in range(5)]
    lines = []
    for row in [head, *table]:
        cells = zip(row[:5], widths, strict=True)
        lines.append("  ".join(c.rjust(w) if i == 3 else c.ljust(w)
                               for i, (c, w) in enumerate(cells)) + "  " + row[5])
    return "\n".join(lines) + "\n"
