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
    cpu_power.csv           CPU model name -> TDP in watts (Intel ARK, AMD product pages)

Writes (into --out, default config/ beside this folder):
    regions.csv   one row per country: ISO alpha-2 `code`, `alpha3`, `name`, `kind`=country,
                  `provider` (empty for countries), `intensity_g_per_kwh` (1 decimal), `year`,
                  `source`, generation shares (fractions of total_twh, 4 decimals) and `total_twh`
    cpu_tdp.csv   `model` (probes.cpu_names.normalise_cpu_model of the name), `tdp_watts`, `name`

Both files start with `#` lines citing the source and licence; readers skip them. Output is
deterministic (sorted rows, fixed number formats, "\\n" line ends), so a rerun on the same data
reproduces the committed files byte for byte; tests/exporter/test_tables.py checks that.

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

from probes.cpu_names import normalise_cpu_model  # noqa: E402  (needs ROOT on sys.path)

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
# Units: intensity_g_per_kwh in gCO2eq per kWh generated, as published; coal..other_renewable are
#   fractions of total_twh (electricity generation, TWh).
# Key: (provider, code). Countries: ISO 3166-1 alpha-2 code, provider empty.
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


def derive_regions(energy_mix: dict[str, dict[str, Any]], report: Report) -> str:
    """regions.csv text from the parsed global_energy_mix.json."""
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
    report.add(f"regions.csv: {len(energy_mix)} entries read, {len(rows)} countries written")
    report.add(f"  skipped, no carbon_intensity: {len(no_intensity)} {no_intensity}")
    report.add(f"  skipped, not an ISO country (aggregates): {len(not_country)} {not_country}")
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
    energy_mix = json.loads((data / "global_energy_mix.json").read_text(encoding="utf-8"))
    with (data / "cpu_power.csv").open(encoding="utf-8", newline="") as f:
        cpu = derive_cpu_tdp(f, report)
    return {"regions.csv": derive_regions(energy_mix, report), "cpu_tdp.csv": cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True,
                        help="folder with global_energy_mix.json and cpu_power.csv")
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
