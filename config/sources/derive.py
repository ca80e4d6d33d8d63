#!/usr/bin/env python3
"""Derive carbonmeter's bundled reference tables from the raw reference files.

Why: the raw files (compiled by the CodeCarbon project from Our World in Data, Intel ARK and AMD
product pages) are not committed to this repository; the tables derived from them are, with their
sources cited beside them. This script is the one way those tables are made, so a reviewer can
regenerate them and see that they match, and an update of the raw data is one command.

Usage, from the repository root:

    python config/sources/derive.py --data DATA            # rewrite config/*.csv
    python config/sources/derive.py --data DATA --check    # exit 1 if out of date
    python config/sources/derive.py --data DIR --out OUTDIR          # write elsewhere

Reads (from --data):
    global_energy_mix.json  countries by ISO alpha-3: generation by source (TWh), the published
                            average carbon intensity (gCO2eq/kWh) and its year (OWID, CC BY 4.0)
    canada_energy_mix.json  Canadian provinces: percent of generation by source, 2023 (CER)
    carbon_intensity_per_source.json  lifecycle gCO2eq/kWh per source, for the provinces' mix
    codecarbon-3.3.2/       the newer files of CodeCarbon 3.3.2's data folder:
      usa_emissions_egrid2023.json      US states: eGRID2023 CO2e output emission rate, lb/MWh
      nordic_emissions_2025.json        Nordic bidding zones, 2025 (ENTSO-E generation mix)
      china_provincial_emissions_2023.json  Chinese provinces, 2023 (MEE and NBS), gCO2/kWh
    cloud_regions.csv       AWS, Azure and Google Cloud regions, gCO2eq/kWh, as Cloud Carbon
                            Footprint uses them, with each figure's source
    impact.csv              Google Cloud regions: Google's published grid intensity, gCO2eq/kWh
    cpu_power.csv           CPU model name -> TDP in watts (Intel ARK, AMD product pages)

Writes (into --out, default config/ beside this folder):
    regions.csv   one row per region: `code`, `alpha3`, `name`, `kind` (country, state,
                  province, zone, cloud), `provider` (empty except for cloud rows),
                  `intensity_g_per_kwh` (1 decimal), `year`, `source`, generation shares
                  (fractions, 4 decimals) and `total_twh`; (provider, code) is unique
    cpu_tdp.csv   `model` (probes.cpu_names.normalise_cpu_model of the name), `tdp_watts`, `name`

Both files start with `#` lines citing the source and licence; readers skip them. Output is
deterministic (sorted rows, fixed number formats, "\\n" line ends), so a rerun on the same data
reproduces the committed files byte for byte; tests/bundled/test_tables.py checks that.

Python 3.10+, standard library only. The ISO 3166-1 alpha-3 -> alpha-2 mapping is embedded below
(generated once from the Debian iso-codes package, iso_3166-1.json, version 4.15), so neither
this script nor the runtime needs pycountry. The CPU name rule is imported from
probes/cpu_names.py, the module the runtime uses, so table and lookup cannot drift apart.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from carbonmeter.probes.cpu_names import normalise_cpu_model  # noqa: E402  (needs ROOT on sys.path)

# ISO 3166-1: alpha-3 -> alpha-2, all 249 officially assigned codes (iso-codes 4.15).
_ISO_3166_1 = (
    "ABW:AW AFG:AF AGO:AO AIA:AI ALA:AX ALB:AL AND:AD ARE:AE ARG:AR ARM:AM ASM:AS ATA:AQ "
    "ATF:TF ATG:AG AUS:AU AUT:AT AZE:AZ BDI:BI BEL:BE BEN:BJ BES:BQ BFA:BF BGD:BD BGR:BG "
    "BHR:BH BHS:BS BIH:BA BLM:BL BLR:BY BLZ:BZ BMU:BM BOL:BO BRA:BR BRB:BB BRN:BN BTN:BT "
    "BVT:BV BWA:BW CAF:CF CAN:CA CCK:CC CHE:CH CHL:CL CHN:CN CIV:CI CMR:CM COD:CD COG:CG "
    "COK:CK COL:CO COM:KM CPV:CV CRI:CR CUB:CU CUW:CW CXR:CX CYM:KY CYP:CY CZE:CZ DEU:DE "
    "DJI:DJ DMA:DM DNK:DK DOM:DO DZA:DZ ECU:EC EGY:EG ERI:ER ESH:EH ESP:ES EST:EE ETH:ET "
    "FIN:FI FJI:FJ FLK:FK FRA:FR FRO:FO FSM:FM GAB:GA GBR:GB GEO:GE GGY:GG GHA:GH GIB:GI "
    "GIN:GN GLP:GP GMB:GM GNB:GW GNQ:GQ GRC:GR GRD:GD GRL:GL GTM:GT GUF:GF GUM:GU GUY:GY "
    "HKG:HK HMD:HM HND:HN HRV:HR HTI:HT HUN:HU IDN:ID IMN:IM IND:IN IOT:IO IRL:IE IRN:IR "
    "IRQ:IQ ISL:IS ISR:IL ITA:IT JAM:JM JEY:JE JOR:JO JPN:JP KAZ:KZ KEN:KE KGZ:KG KHM:KH "
    "KIR:KI KNA:KN KOR:KR KWT:KW LAO:LA LBN:LB LBR:LR LBY:LY LCA:LC LIE:LI LKA:LK LSO:LS "
    "LTU:LT LUX:LU LVA:LV MAC:MO MAF:MF MAR:MA MCO:MC MDA:MD MDG:MG MDV:MV MEX:MX MHL:MH "
    "MKD:MK MLI:ML MLT:MT MMR:MM MNE:ME MNG:MN MNP:MP MOZ:MZ MRT:MR MSR:MS MTQ:MQ MUS:MU "
    "MWI:MW MYS:MY MYT:YT NAM:NA NCL:NC NER:NE NFK:NF NGA:NG NIC:NI NIU:NU NLD:NL NOR:NO "
    "NPL:NP NRU:NR NZL:NZ OMN:OM PAK:PK PAN:PA PCN:PN PER:PE PHL:PH PLW:PW PNG:PG POL:PL "
    "PRI:PR PRK:KP PRT:PT PRY:PY PSE:PS PYF:PF QAT:QA REU:RE ROU:RO RUS:RU RWA:RW SAU:SA "
    "SDN:SD SEN:SN SGP:SG SGS:GS SHN:SH SJM:SJ SLB:SB SLE:SL SLV:SV SMR:SM SOM:SO SPM:PM "
    "SRB:RS SSD:SS STP:ST SUR:SR SVK:SK SVN:SI SWE:SE SWZ:SZ SXM:SX SYC:SC SYR:SY TCA:TC "
    "TCD:TD TGO:TG THA:TH TJK:TJ TKL:TK TKM:TM TLS:TL TON:TO TTO:TT TUN:TN TUR:TR TUV:TV "
    "TWN:TW TZA:TZ UGA:UG UKR:UA UMI:UM URY:UY USA:US UZB:UZ VAT:VA VCT:VC VEN:VE VGB:VG "
    "VIR:VI VNM:VN VUT:VU WLF:WF WSM:WS YEM:YE ZAF:ZA ZMB:ZM ZWE:ZW"
)
ALPHA3_TO_ALPHA2: dict[str, str] = dict(pair.split(":") for pair in _ISO_3166_1.split())
# Our World in Data's own code for Kosovo, which has no ISO alpha-3; XK is the code the EU and
# most software use. Other OWID_* codes are aggregates (World, Europe, ...) and are skipped.
ALPHA3_TO_ALPHA2["OWID_KOS"] = "XK"

OWID_SOURCE = "Our World in Data energy dataset (Ember, Energy Institute), CC BY 4.0"

REGION_COLUMNS = (
    "code", "alpha3", "name", "kind", "provider", "intensity_g_per_kwh", "year", "source",
    "coal", "oil", "natural_gas", "nuclear", "hydro", "wind", "solar", "biomass",
    "other_renewable", "total_twh",
)
# Share column -> OWID field (TWh). other_renewable is resolved in _other_renewable_twh.
SHARE_FIELDS = {
    "coal": "coal_TWh",
    "oil": "oil_TWh",
    "natural_gas": "gas_TWh",
    "nuclear": "nuclear_TWh",
    "hydro": "hydroelectricity_TWh",
    "wind": "wind_TWh",
    "solar": "solar_TWh",
    "biomass": "biofuel_TWh",
}

REGIONS_HEADER = """\
# carbonmeter bundled regions: average carbon intensity of electricity, with the generation mix.
# Generated by config/sources/derive.py from reference data; do not edit by hand.
# Countries (kind=country): Our World in Data, energy dataset, https://github.com/owid/energy-data
#   (data from Ember and the Energy Institute Statistical Review of World Energy), licensed
#   CC BY 4.0, https://creativecommons.org/licenses/by/4.0/ ; figures as compiled in the CodeCarbon
#   project's global_energy_mix.json. Changes: ISO alpha-2 codes added, generation turned into
#   shares, numbers rounded. The year of each figure is in the `year` column.
# US states (kind=state): US EPA eGRID2023, state annual CO2-equivalent total output emission
#   rate (field STC2ERTA, data year 2023), https://www.epa.gov/egrid , public domain; as compiled
#   in CodeCarbon 3.3.2's usa_emissions_egrid2023.json. CO2eq (CO2, CH4, N2O) emitted at the
#   plants, not lifecycle. Converted from lb/MWh: x 0.45359237 (1 lb = 0.45359237 kg, and
#   kg/MWh = g/kWh). Codes: ISO 3166-2:US (US-CA).
# Canadian provinces and territories (kind=province): Canada Energy Regulator, Canada's Energy
#   Future / provincial energy profiles, share of generation by source, 2023; as compiled in
#   CodeCarbon's canada_energy_mix.json. Intensity computed here: sum(share x lifecycle factor) /
#   sum(shares), factors in gCO2eq/kWh: coal 995, petroleum 816, natural gas 743 (the
#   energy-usage project, after US EPA eGRID); nuclear 29, hydro 26, wind 26, solar 48 (World
#   Nuclear Association, lifecycle comparison, 2011); biomass 230 (IPCC AR5 WG3 Annex III,
#   2014, median). Tidal and other have no factor and are 0 % everywhere. Petroleum is listed
#   as oil, tidal as other_renewable. Codes: ISO 3166-2:CA (CA-QC).
# Chinese provinces, municipalities and autonomous regions (kind=province): Ministry of Ecology
#   and Environment and National Bureau of Statistics of China, Announcement 2025 No. 47, table
#   3, provincial average electricity CO2 emission factors, 2023; as compiled in CodeCarbon
#   3.3.2's china_provincial_emissions_2023.json. CO2 only (not CO2eq), location-based, with
#   inter-provincial transfers. Tibet, Hong Kong, Macao and Taiwan are not in the table.
#   Codes: ISO 3166-2:CN (CN-SC).
# Nordic bidding zones (kind=zone): ENTSO-E Transparency, actual generation per production type
#   per bidding zone, full year 2025, x the lifecycle factors per source above; types without a
#   factor count as 0 (a lower bound where the `source` column says so); as compiled in
#   CodeCarbon 3.3.2's nordic_emissions_2025.json (SE1-SE4, NO1-NO5). Finland is one bidding
#   zone, the whole country: its country row FI covers it. Codes: the Nord Pool zone names.
# Cloud regions (kind=cloud, provider aws, azure or gcp; code: the provider's region name):
#   gcp: Google Cloud region carbon data, grid carbon intensity, 2023,
#   https://cloud.google.com/sustainability/region-carbon (CodeCarbon's impact.csv; the region
#   me-central1, misspelt there, is corrected). aws, azure, and gcp us-central2: the factors Cloud
#   Carbon Footprint uses (Apache-2.0, commit b7a049c), each with the source CCF names for it;
#   the year is given where that source states one.
# Units: intensity_g_per_kwh in gCO2eq per kWh generated (gCO2 per kWh for Chinese provinces),
#   1 decimal; coal..other_renewable are fractions of generation, 4 decimals; total_twh in TWh.
# Key: (provider, code); provider is empty except for cloud rows.
"""

CPU_HEADER = """\
# carbonmeter bundled CPU TDPs: thermal design power by CPU model, for the estimated CPU source.
# Generated by config/sources/derive.py from reference data; do not edit by hand.
# Source: Intel ARK and AMD product pages (models released up to 2025), as compiled in the
#   CodeCarbon project's cpu_power.csv. TDP in watts.
# model: probes.cpu_names.normalise_cpu_model(name), the key the runtime looks up; name: the
#   product page's spelling. Where several names share a model, the highest TDP is kept.
"""


@dataclass
class Report:
    """What a derivation kept and dropped, printed so a reviewer sees nothing vanish silently."""

    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)


def fixed(value: float, places: int) -> str:
    """`value` with exactly `places` decimals, halves rounded up, as a person would by hand.

    Rounds the shortest decimal form of the float (repr), not its binary value, so the
    published 380.95 becomes 381.0, not 380.9; the same on every platform, which keeps the
    output byte-for-byte reproducible.
    """
    quantum = Decimal(1).scaleb(-places)
    rounded = Decimal(repr(float(value))).quantize(quantum, rounding=ROUND_HALF_UP)
    return str(abs(rounded) if rounded == 0 else rounded)  # never "-0.0"


def trimmed(value: float, places: int) -> str:
    """Like `fixed`, without trailing zeros: 514.1099999999999 -> 514.11, 95.0 -> 95."""
    text = fixed(value, places)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _twh(entry: dict[str, Any], key: str) -> float | None:
    """A TWh figure, or None where OWID has none (absent, null or empty)."""
    value = entry.get(key)
    return None if value is None or value == "" else float(value)


def _other_renewable_twh(entry: dict[str, Any]) -> float | None:
    """Other renewables without bioenergy, which has its own column (biomass).

    OWID's other_renewable_TWh includes bioenergy; where the _exc_biofuel field is missing we
    subtract biofuel ourselves so that the shares still add up to one.
    """
    exc = _twh(entry, "other_renewable_exc_biofuel_TWh")
    if exc is not None:
        return exc
    incl, bio = _twh(entry, "other_renewable_TWh"), _twh(entry, "biofuel_TWh")
    if incl is None:
        return None
    return max(incl - (bio or 0.0), 0.0)


def derive_countries(energy_mix: dict[str, dict[str, Any]], report: Report) -> list[dict[str, str]]:
    """Country rows from the parsed global_energy_mix.json."""
    rows: list[dict[str, str]] = []
    no_intensity: list[str] = []
    not_country: list[str] = []
    for alpha3, entry in energy_mix.items():
        intensity = entry.get("carbon_intensity")
        if intensity is None or intensity == "":
            no_intensity.append(alpha3)
            continue
        code = ALPHA3_TO_ALPHA2.get(alpha3)
        if code is None:
            not_country.append(alpha3)
            continue
        total = _twh(entry, "total_TWh")
        twh = {col: _twh(entry, key) for col, key in SHARE_FIELDS.items()}
        twh["other_renewable"] = _other_renewable_twh(entry)
        row = {
            "code": code,
            "alpha3": alpha3,
            "name": str(entry.get("country_name") or alpha3),
            "kind": "country",
            "provider": "",
            "intensity_g_per_kwh": fixed(float(intensity), 1),
            "year": str(int(entry["year"])),
            "source": OWID_SOURCE,
            "total_twh": "" if total is None else trimmed(total, 3),
        }
        for col, value in twh.items():
            if value is None or total is None or total <= 0:
                row[col] = ""  # no share where the mix or the total is unknown
            else:
                row[col] = fixed(value / total, 4)
        rows.append(row)

    codes = [r["code"] for r in rows]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        raise SystemExit(f"regions: alpha-2 codes not unique: {', '.join(dupes)}")
    rows.sort(key=lambda r: r["code"])
    report.add(f"  countries: {len(energy_mix)} entries read, {len(rows)} written")
    report.add(f"  skipped, no carbon_intensity: {len(no_intensity)} {no_intensity}")
    report.add(f"  skipped, not an ISO country (aggregates): {len(not_country)} {not_country}")
    return rows


LB_TO_KG = 0.45359237  # exact, by the international yard and pound agreement (1959)
NEWER = "codecarbon-3.3.2"  # the folder of CodeCarbon 3.3.2's newer data files, under --data
EGRID_SOURCE = ("US EPA eGRID2023 state CO2-equivalent total output emission rate (STC2ERTA; "
                "plant emissions, not lifecycle), lb/MWh x 0.45359237")


def _title(name: str) -> str:
    """'district of columbia' -> 'District of Columbia': the sources spell names in lower case."""
    small = {"of", "and"}
    return " ".join(w if w in small else w.capitalize() for w in name.split())


def derive_states(usa: dict[str, Any], report: Report) -> list[dict[str, str]]:
    """US state rows from usa_emissions_egrid2023.json (eGRID2023, lb CO2e/MWh)."""
    unit = usa.get("_unit", {}).get("emissions")
    if unit != "lbs/MWh":
        raise SystemExit(f"usa_emissions_egrid2023.json: expected emissions in lbs/MWh, found "
                         f"{unit!r}")
    meta = usa.get("_source", {})
    if meta.get("field") != "STC2ERTA":  # the CO2e rate; STCO2RTA would be CO2 alone
        raise SystemExit(f"usa_emissions_egrid2023.json: expected field STC2ERTA, found "
                         f"{meta.get('field')!r}")
    year = str(int(meta["year"]))
    rows, skipped = [], []
    for name, entry in usa.items():
        code = str(entry.get("regionCode", "")) if isinstance(entry, dict) else ""
        if name.startswith("_") or not re.fullmatch(r"[A-Z]{2}", code):
            skipped.append(name)  # the unit and source notes and the national average ("usa")
            continue
        rows.append(_row(code=f"US-{code}", name=_title(name), kind="state",
                         intensity=float(entry["emissions"]) * LB_TO_KG, year=year,
                         source=EGRID_SOURCE))
    report.add(f"  US states: {len(rows)} written; skipped {skipped} (the national average is "
               "the country row US)")
    return sorted(rows, key=lambda r: r["code"])


# canada_energy_mix.json key -> (regions.csv share column, factor key in
# carbon_intensity_per_source.json, or a number with its citation where that file has none).
CANADA_SOURCES: dict[str, tuple[str, str | float | None]] = {
    "coal": ("coal", "coal"),
    "petroleum": ("oil", "petroleum"),
    "naturalGas": ("natural_gas", "natural_gas"),
    "nuclear": ("nuclear", "nuclear"),
    "hydro": ("hydro", "hydroelectricity"),
    "wind": ("wind", "wind"),
    "solar": ("solar", "solar"),
    "biomass": ("biomass", 230.0),  # IPCC AR5 WG3 Annex III (2014), median for biomass
    "tidal": ("other_renewable", None),  # no factor: 0 % in every province
    "other": ("", None),  # unknown sources: 0 % in every province
}
# ISO 3166-2:CA subdivision codes by the names the source uses.
CANADA_CODES = {
    "alberta": "AB", "british columbia": "BC", "manitoba": "MB", "new brunswick": "NB",
    "newfoundland and labrador": "NL", "nova scotia": "NS", "northwest territories": "NT",
    "nunavut": "NU", "ontario": "ON", "prince edward island": "PE", "quebec": "QC",
    "saskatchewan": "SK", "yukon": "YT",
}
CER_SOURCE = ("Canada Energy Regulator 2023 generation mix x lifecycle factor per source "
              "(factors in the header)")


def derive_provinces(canada: dict[str, dict[str, float]], per_source: dict[str, Any],
                     report: Report) -> list[dict[str, str]]:
    """Province rows: the published mix, priced with lifecycle factors per source."""
    rows = []
    for name, mix in canada.items():
        code = CANADA_CODES.get(name)
        if code is None:
            raise SystemExit(f"canada_energy_mix.json: no ISO 3166-2 code for {name!r}")
        unknown = sorted(set(mix) - set(CANADA_SOURCES) - {"total"})
        if unknown:
            raise SystemExit(f"canada_energy_mix.json: {name}: unmapped sources {unknown}")
        shares = {k: float(v) for k, v in mix.items() if k != "total"}
        total = sum(shares.values())
        grams = 0.0
        row = _row(code=f"CA-{code}", name=_title(name), kind="province", intensity=0.0,
                   year="2023", source=CER_SOURCE)
        for src, pct in shares.items():
            column, factor = CANADA_SOURCES[src]
            if pct and (factor is None or not column):
                raise SystemExit(f"canada_energy_mix.json: {name}: {src} is {pct} % and has no "
                                 "factor; add one to CANADA_SOURCES")
            if isinstance(factor, str):
                factor = float(per_source[factor])
            grams += pct * (factor or 0.0)
            if column:
                row[column] = fixed(pct / total, 4)
        row["intensity_g_per_kwh"] = fixed(grams / total, 1)
        if abs(total - float(mix.get("total", total))) > 0.05:
            report.add(f"  {name}: shares add up to {total:g} %, the source's total says "
                       f"{mix['total']}")
        rows.append(row)
    report.add(f"  Canadian provinces and territories: {len(rows)} written")
    return sorted(rows, key=lambda r: r["code"])


NORDIC_SOURCE = ("ENTSO-E Transparency 2025 generation per production type of the bidding zone "
                 "x lifecycle factor per source")
_COVERAGE = re.compile(r"([\d.]+)%(?: \(uncovered: (.*)\))?")
LOWER_BOUND_BELOW = 95.0  # % of generation with a factor; below it the source says so


def derive_zones(nordic: dict[str, Any], report: Report) -> list[dict[str, str]]:
    """Nordic bidding zone rows; Finland's single zone is the country itself.

    The file prices each zone's generation mix with the per-source factors and counts the
    types it has no factor for (ENTSO-E 'Other', waste) at 0, so a zone where much of the
    generation is such is a lower bound: its `source` says how much is not counted."""
    rows, skipped = [], []
    for code, entry in nordic["data"].items():
        if re.fullmatch(r"[A-Z]{2}", code):
            skipped.append(code)  # a whole-country zone: the country row has the same key
            continue
        if entry.get("unit") != "gCO2eq/kWh":
            raise SystemExit(f"nordic_emissions_2025.json: {code}: unexpected unit "
                             f"{entry.get('unit')}")
        found = _COVERAGE.fullmatch(str(entry.get("coverage", "")))
        if found is None:
            raise SystemExit(f"nordic_emissions_2025.json: {code}: no coverage figure")
        source = NORDIC_SOURCE
        if float(found[1]) < LOWER_BOUND_BELOW:
            source += f"; a lower bound: generation without a factor ({found[2]}) counts as 0"
        rows.append(_row(code=code, name=str(entry["description"]), kind="zone",
                         intensity=float(entry["emission_factor"]), year=str(entry["year"]),
                         source=source))
    report.add(f"  Nordic bidding zones: {len(rows)} written; skipped {skipped} (whole-country "
               "zones, covered by the country row)")
    return sorted(rows, key=lambda r: r["code"])


CHINA_SOURCE = ("China MEE and NBS, 2023 provincial average electricity CO2 emission factors "
                "(Announcement 2025 No. 47; CO2 only, not CO2eq)")


def derive_china(china: dict[str, Any], report: Report) -> list[dict[str, str]]:
    """Chinese province rows, as published (gCO2/kWh)."""
    rows = []
    for code, entry in china["data"].items():
        if not re.fullmatch(r"CN-[A-Z]{2}", code):
            raise SystemExit(f"china_provincial_emissions_2023.json: {code!r} is not an "
                             "ISO 3166-2:CN code")
        if entry.get("unit") != "gCO2/kWh":
            raise SystemExit(f"china_provincial_emissions_2023.json: {code}: unexpected unit "
                             f"{entry.get('unit')}")
        rows.append(_row(code=code, name=str(entry["description"]), kind="province",
                         intensity=float(entry["emission_factor"]), year=str(entry["year"]),
                         source=CHINA_SOURCE))
    report.add(f"  Chinese provinces: {len(rows)} written (the source has no Tibet; Hong Kong, "
               "Macao and Taiwan are country rows)")
    return sorted(rows, key=lambda r: r["code"])


GOOGLE_SOURCE = ("Google Cloud region carbon data 2023, grid carbon intensity "
                 "(cloud.google.com/sustainability/region-carbon)")
GOOGLE_FIXES = {"me-cenrtal1": "me-central1"}  # a typo in impact.csv; Google's own list has Doha
CCF_YEARS = (("EPA eGRID2020", "2020"), ("carbonfootprint.com country factors for 2021", "2021"))


def derive_cloud(ccf: list[dict[str, str]], google: list[dict[str, str]],
                 report: Report) -> list[dict[str, str]]:
    """Cloud region rows: Google's own 2023 figures for gcp, CCF's factors for the rest."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for g in google:
        if g["provider"] != "gcp":
            raise SystemExit(f"impact.csv: unexpected provider {g['provider']!r}")
        code = GOOGLE_FIXES.get(g["region"], g["region"])
        place = ", ".join(x for x in (g["city"], g["state"], g["country_name"]) if x)
        rows[("gcp", code)] = _row(code=code, name=place, kind="cloud", provider="gcp",
                                   intensity=float(g["impact"]), year="2023",
                                   source=GOOGLE_SOURCE)
    ccf_kept: dict[str, int] = {}
    ccf_superseded = []
    for c in ccf:
        key = (c["provider"], c["region"])
        if key in rows:
            ccf_superseded.append(c["region"])  # gcp: Google's newer figure wins
            continue
        note = c["source_note"]
        year = next((y for prefix, y in CCF_YEARS if note.startswith(prefix)), "")
        rows[key] = _row(code=c["region"], name=c["location"], kind="cloud",
                         provider=c["provider"], intensity=float(c["intensity_g_per_kwh"]),
                         year=year, source=f"Cloud Carbon Footprint (Apache-2.0): {note}")
        ccf_kept[c["provider"]] = ccf_kept.get(c["provider"], 0) + 1
    report.add(f"  cloud: {len(google)} gcp regions from Google's 2023 data; from CCF "
               f"{ccf_kept}; {len(ccf_superseded)} CCF gcp figures superseded by Google's")
    return [rows[k] for k in sorted(rows)]


def _row(*, code: str, name: str, kind: str, intensity: float, year: str, source: str,
         provider: str = "") -> dict[str, str]:
    return {"code": code, "alpha3": "", "name": name, "kind": kind, "provider": provider,
            "intensity_g_per_kwh": fixed(intensity, 1), "year": year, "source": source}


def derive_regions(data: Path, report: Report) -> str:
    """regions.csv text: countries, then states, provinces, zones and cloud regions."""
    def load(name: str) -> Any:
        return json.loads((data / name).read_text(encoding="utf-8"))

    def table(name: str) -> list[dict[str, str]]:
        with (data / name).open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    rows = derive_countries(load("global_energy_mix.json"), report)
    rows += derive_states(load(f"{NEWER}/usa_emissions_egrid2023.json"), report)
    rows += sorted(derive_provinces(load("canada_energy_mix.json"),
                                    load("carbon_intensity_per_source.json"), report)
                   + derive_china(load(f"{NEWER}/china_provincial_emissions_2023.json"), report),
                   key=lambda r: r["code"])
    rows += derive_zones(load(f"{NEWER}/nordic_emissions_2025.json"), report)
    rows += derive_cloud(table("cloud_regions.csv"), table("impact.csv"), report)
    keys = [(r["provider"], r["code"].casefold()) for r in rows]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise SystemExit(f"regions: (provider, code) not unique: {dupes}")
    report.add(f"regions.csv: {len(rows)} rows")
    return REGIONS_HEADER + _csv_text(REGION_COLUMNS, rows)


_TDP = re.compile(r"\d+(?:\.\d+)?")


def derive_cpu_tdp(lines: Iterable[str], report: Report) -> str:
    """cpu_tdp.csv text from the lines of cpu_power.csv (columns Name, TDP)."""
    best: dict[str, tuple[float, str]] = {}
    tdps: dict[str, set[float]] = {}
    read = malformed = empty = merged = 0
    malformed_names: list[str] = []
    for rec in csv.DictReader(lines):
        read += 1
        name = " ".join(rec["Name"].split())  # some names carry no-break or double spaces
        tdp_text = rec["TDP"].strip()
        # "27.29.5" is a range run together (ambiguous); "0.0" is a missing figure.
        if not _TDP.fullmatch(tdp_text) or float(tdp_text) <= 0:
            malformed += 1
            malformed_names.append(f"{name}={tdp_text}")
            continue
        model = normalise_cpu_model(name)
        if not model:
            empty += 1
            continue
        tdp = float(tdp_text)
        tdps.setdefault(model, set()).add(tdp)
        if model in best:
            merged += 1
            if tdp <= best[model][0]:
                continue
        best[model] = (tdp, name)
    conflicts = sorted(m for m, values in tdps.items() if len(values) > 1)
    rows = [
        {"model": model, "tdp_watts": trimmed(tdp, 3), "name": name}
        for model, (tdp, name) in sorted(best.items())
    ]
    report.add(f"cpu_tdp.csv: {read} names read, {len(rows)} models written")
    report.add(f"  skipped, malformed or zero TDP: {malformed} {malformed_names}")
    report.add(f"  skipped, empty after normalisation: {empty}")
    report.add(f"  names merged into an existing model: {merged}; models whose names disagreed "
               f"on TDP (max kept): {len(conflicts)}")
    return CPU_HEADER + _csv_text(("model", "tdp_watts", "name"), rows)


def _csv_text(columns: Iterable[str], rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def derive_all(data: Path, report: Report) -> dict[str, str]:
    """File name -> text of every derived table."""
    with (data / "cpu_power.csv").open(encoding="utf-8", newline="") as f:
        cpu = derive_cpu_tdp(f, report)
    return {"regions.csv": derive_regions(data, report), "cpu_tdp.csv": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with the reference files (see above)")
    parser.add_argument("--out", type=Path, default=ROOT / "config",
                        help="folder to write the tables into (default: config/)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a table in --out differs")
    args = parser.parse_args(argv)

    report = Report()
    tables = derive_all(args.data, report)
    stale = []
    for file_name, text in tables.items():
        path = args.out / file_name
        if args.check:
            if not path.exists() or path.read_bytes() != text.encode("utf-8"):
                stale.append(str(path))
            continue
        path.write_bytes(text.encode("utf-8"))
    for line in report.lines:
        print(line, file=sys.stderr)
    if stale:
        print(f"out of date: {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
