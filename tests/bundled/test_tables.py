"""The bundled reference tables: figures checked by hand against the source, and reproducible.

The expected figures below were read by hand from the reference data (global_energy_mix.json,
canada_energy_mix.json, cloud_regions.csv, impact.csv, cpu_power.csv, and CodeCarbon 3.3.2's
usa_emissions_egrid2023.json, nordic_emissions_2025.json and
china_provincial_emissions_2023.json), which is not in the repository, and computed by hand
where the table converts.
Only the last test reads it, from the folder REFERENCE_DATA_DIR names, to check that
config/sources/derive.py regenerates the committed tables byte for byte.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from carbonmeter.probes.cpu_names import (
    lookup_tdp,
    model_tokens,
    normalise_cpu_model,
    parse_tdp_table,
)
from tests.fixtures.tables import comments_and_rows

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
REFERENCE_DATA = Path(os.environ.get("REFERENCE_DATA_DIR", "/nonexistent"))

REGION_COLUMNS = [
    "code", "alpha3", "name", "kind", "provider", "intensity_g_per_kwh", "year", "source",
    "coal", "oil", "natural_gas", "nuclear", "hydro", "wind", "solar", "biomass",
    "other_renewable", "total_twh",
]
SHARES = REGION_COLUMNS[8:17]


@pytest.fixture(scope="module")
def regions() -> dict[str, dict[str, str]]:
    """Every row without a provider (countries, states, provinces, zones), by code."""
    _, rows = comments_and_rows("regions.csv")
    return {r["code"]: r for r in rows if not r["provider"]}


@pytest.fixture(scope="module")
def cloud() -> dict[tuple[str, str], dict[str, str]]:
    _, rows = comments_and_rows("regions.csv")
    return {(r["provider"], r["code"]): r for r in rows if r["provider"]}


@pytest.fixture(scope="module")
def tdp_table() -> dict[str, float]:
    return parse_tdp_table((CONFIG / "cpu_tdp.csv").read_text(encoding="utf-8"))


# --- regions.csv -----------------------------------------------------------------------------


def test_regions_header_cites_source_and_generator() -> None:
    comments, _ = comments_and_rows("regions.csv")
    text = "".join(comments)
    assert "config/sources/derive.py" in text
    assert "Our World in Data" in text and "CC BY 4.0" in text
    header = (CONFIG / "regions.csv").read_text(encoding="utf-8").splitlines()[len(comments)]
    assert header.split(",") == REGION_COLUMNS


def test_regions_one_row_per_country_with_unique_codes() -> None:
    _, rows = comments_and_rows("regions.csv")
    rows = [r for r in rows if r["kind"] == "country"]
    assert len(rows) == 213  # every entry of global_energy_mix.json has an intensity
    codes = [r["code"] for r in rows]
    alpha3 = [r["alpha3"] for r in rows]
    assert len(set(codes)) == len(codes)
    assert len(set(alpha3)) == len(alpha3)
    assert all(re.fullmatch(r"[A-Z]{2}", c) for c in codes)
    assert all(re.fullmatch(r"[A-Z]{3}", c) for c in alpha3)
    assert {r["kind"] for r in rows} == {"country"}
    assert {r["provider"] for r in rows} == {""}
    assert all("CC BY 4.0" in r["source"] for r in rows)


@pytest.mark.parametrize(
    ("code", "alpha3", "name", "intensity", "year"),
    [
        # carbon_intensity and year as published in global_energy_mix.json, rounded to 0.1
        ("FR", "FRA", "France", "56.0", "2023"),  # 56.039
        ("DE", "DEU", "Germany", "381.0", "2023"),  # 380.95, half rounded up
        ("PL", "POL", "Poland", "661.9", "2023"),  # 661.926
        ("IN", "IND", "India", "713.4", "2023"),  # 713.441
        ("US", "USA", "United States", "369.5", "2023"),  # 369.473
        ("GB", "GBR", "United Kingdom", "237.6", "2023"),  # 237.589
        ("CN", "CHN", "China", "582.3", "2023"),  # 582.317
        ("IS", "ISL", "Iceland", "27.7", "2022"),  # 27.68
        ("EH", "ESH", "Western Sahara", "666.7", "2009"),  # 666.667, the oldest figure
    ],
)
def test_region_figures_match_source(
    regions: dict[str, dict[str, str]], code: str, alpha3: str, name: str, intensity: str,
    year: str,
) -> None:
    row = regions[code]
    assert (row["alpha3"], row["name"]) == (alpha3, name)
    assert (row["intensity_g_per_kwh"], row["year"]) == (intensity, year)


def test_region_mix_matches_source(regions: dict[str, dict[str, str]]) -> None:
    # France 2023: nuclear 335.65, hydro 53.19, gas 31.43 TWh of 514.11 TWh.
    fr = regions["FR"]
    assert fr["total_twh"] == "514.11"
    assert fr["nuclear"] == "0.6529"
    assert fr["hydro"] == "0.1035"
    assert fr["natural_gas"] == "0.0611"
    # Poland 2023: coal 103.02 of 168.75 TWh; no nuclear.
    pl = regions["PL"]
    assert (pl["coal"], pl["nuclear"], pl["total_twh"]) == ("0.6105", "0.0000", "168.75")
    # Germany 2023: other renewables without bioenergy 0.2 TWh, bioenergy 46.04 TWh.
    de = regions["DE"]
    assert (de["other_renewable"], de["biomass"]) == ("0.0004", "0.0912")


def test_region_shares_sum_to_one(regions: dict[str, dict[str, str]]) -> None:
    checked = 0
    for code, row in regions.items():
        if row["kind"] in ("country", "province") and row["hydro"] and (
                row["total_twh"] or "1") != "0":  # a mix is published (not for China)
            total = sum(float(row[s]) for s in SHARES)
            assert total == pytest.approx(1.0, abs=0.002), code
            checked += 1
    assert checked > 213


def test_every_row_unique_with_kind_source_and_intensity() -> None:
    _, rows = comments_and_rows("regions.csv")
    keys = [(r["provider"], r["code"].casefold()) for r in rows]
    assert len(set(keys)) == len(keys)
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["kind"], r["provider"])] = counts.get((r["kind"], r["provider"]), 0) + 1
        assert r["source"] and float(r["intensity_g_per_kwh"]) >= 0, r
        assert (r["provider"] != "") == (r["kind"] == "cloud"), r
    assert counts == {("country", ""): 213, ("state", ""): 51, ("province", ""): 13 + 30,
                      ("zone", ""): 9, ("cloud", "aws"): 27, ("cloud", "azure"): 77,
                      ("cloud", "gcp"): 41}


@pytest.mark.parametrize(
    ("code", "name", "kind", "intensity", "year"),
    [
        # eGRID2023 lb CO2e/MWh (STC2ERTA) x 0.45359237 = g/kWh
        ("US-CA", "California", "state", "179.1", "2023"),  # 394.769 -> 179.0642
        ("US-TX", "Texas", "state", "349.8", "2023"),  # 771.179 -> 349.8009
        ("US-WY", "Wyoming", "state", "831.6", "2023"),  # 1833.263 -> 831.5541
        ("US-VT", "Vermont", "state", "23.7", "2023"),  # 52.239 -> 23.6952
        ("US-DC", "District of Columbia", "state", "179.2", "2023"),  # 395.011 -> 179.1740
        ("US-GA", "Georgia", "state", "325.4", "2023"),  # 717.445 -> 325.4276
        # CER 2023 mix: sum(% x factor) / sum(%)
        # Quebec: (0.2x743 + 0.3x816 + 0.7x230 + 0.01x48 + 6.7x26 + 92.1x26) / 100.01
        #       = 3123.68 / 100.01 = 31.233
        ("CA-QC", "Quebec", "province", "31.2", "2023"),
        # Alberta: (73.5x743 + 0.02x816 + 2x230 + 8x995 + 3.2x48 + 11.3x26 + 1.8x26) / 99.82
        #        = (54610.5 + 16.32 + 460 + 7960 + 153.6 + 293.8 + 46.8) / 99.82 = 636.556
        ("CA-AB", "Alberta", "province", "636.6", "2023"),
        # Nunavut: (99.8x816 + 0.2x48) / 100 = 814.464
        ("CA-NU", "Nunavut", "province", "814.5", "2023"),
        # Newfoundland and Labrador: (0.2x743 + 0.4x816 + 0.4x26 + 99x26) / 100 = 30.594
        ("CA-NL", "Newfoundland and Labrador", "province", "30.6", "2023"),
        # MEE/NBS 2023 provincial factors, gCO2/kWh as published
        ("CN-SC", "Sichuan", "province", "156.4", "2023"),
        ("CN-YN", "Yunnan", "province", "133.3", "2023"),
        ("CN-BJ", "Beijing", "province", "555.4", "2023"),
        ("CN-NM", "Inner Mongolia", "province", "647.9", "2023"),
        # Nordic zones, ENTSO-E 2025 mix x per-source factors, g/kWh as published
        ("SE1", "Sweden Bidding Zone 1 (Northern Sweden)", "zone", "25.9", "2025"),
        ("SE3", "Sweden Bidding Zone 3 (South-central Sweden, includes Stockholm)", "zone",
         "27.0", "2025"),
        ("SE4", "Sweden Bidding Zone 4 (Southern Sweden)", "zone", "24.7", "2025"),
        ("NO1", "Norway Bidding Zone 1 (Oslo)", "zone", "26.0", "2025"),
        ("NO4", "Norway Bidding Zone 4 (Northern Norway)", "zone", "51.7", "2025"),
    ],
)
def test_subnational_figures_match_source(
    regions: dict[str, dict[str, str]], code: str, name: str, kind: str, intensity: str,
    year: str,
) -> None:
    row = regions[code]
    assert (row["name"], row["kind"], row["intensity_g_per_kwh"], row["year"]) == (
        name, kind, intensity, year)


def test_subnational_sources_say_what_they_count(regions: dict[str, dict[str, str]]) -> None:
    assert "eGRID2023" in regions["US-CA"]["source"]
    assert "CO2-equivalent" in regions["US-CA"]["source"]
    assert "CO2 only" in regions["CN-SC"]["source"]
    # SE4: 14.95 % of its generation (ENTSO-E "Other") has no factor and counts as 0
    assert "lower bound" in regions["SE4"]["source"] and "14.95%" in regions["SE4"]["source"]
    assert "lower bound" not in regions["NO1"]["source"]  # 99.58 % covered
    assert "Canada Energy Regulator 2023" in regions["CA-QC"]["source"]
    qc = regions["CA-QC"]  # 92.1 % hydro of 100.01
    assert (qc["hydro"], qc["wind"], qc["oil"], qc["total_twh"]) == (
        "0.9209", "0.0670", "0.0030", "")
    # Finland is one bidding zone: the country row, from OWID, is the only FI.
    assert regions["FI"]["kind"] == "country"


@pytest.mark.parametrize(
    ("provider", "code", "intensity", "year", "source"),
    [
        ("aws", "eu-west-3", "51.1", "", "EEA"),
        ("aws", "us-east-1", "379.1", "2020", "eGRID2020"),  # 379.069, NERC SERC
        ("aws", "ap-southeast-2", "760.0", "2021", "carbonfootprint.com"),
        ("azure", "westeurope", "328.4", "", "EEA"),
        ("azure", "francecentral", "51.3", "2021", "carbonfootprint.com"),  # 51.28
        ("gcp", "europe-west9", "34.0", "2023", "Google Cloud region carbon data 2023"),
        ("gcp", "us-central1", "430.0", "2023", "Google"),  # Google 2023, not CCF's 456
        ("gcp", "me-central1", "575.0", "2023", "Google"),  # 'me-cenrtal1' in impact.csv
        ("gcp", "us-central2", "456.0", "", "Cloud Carbon Footprint"),  # CCF only
    ],
)
def test_cloud_figures_match_source(
    cloud: dict[tuple[str, str], dict[str, str]], provider: str, code: str, intensity: str,
    year: str, source: str,
) -> None:
    row = cloud[(provider, code)]
    assert (row["kind"], row["intensity_g_per_kwh"], row["year"]) == ("cloud", intensity, year)
    assert source in row["source"]


# --- cpu_tdp.csv and probes.cpu_names ----------------------------------------------------------


def test_cpu_table_shape() -> None:
    comments, rows = comments_and_rows("cpu_tdp.csv")
    assert "config/sources/derive.py" in "".join(comments)
    assert list(rows[0]) == ["model", "tdp_watts", "name"]
    assert len(rows) == 4626  # 4,903 names, 5 with a malformed or zero TDP, 272 merged
    models = [r["model"] for r in rows]
    assert len(set(models)) == len(models)
    for r in rows:
        # The key is the normal form of the name, so the table and the lookup cannot drift.
        assert r["model"] == normalise_cpu_model(r["name"]), r
        assert float(r["tdp_watts"]) > 0, r


@pytest.mark.parametrize(
    ("cpuinfo", "normal"),
    [
        ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "xeon platinum 8375c"),
        ("AMD EPYC 7763 64-Core Processor", "epyc 7763"),
        ("11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", "core i7-1165g7"),
        ("AMD Ryzen 9 5950X 16-Core Processor", "ryzen 9 5950x"),
        ("Intel(R) Core(TM) i7 CPU         920  @ 2.67GHz", "core i7-920"),
        ("Intel(R) Core(TM)2 Quad CPU    Q6600  @ 2.40GHz", "core 2 quad q6600"),
        ("AMD Ryzen 7 PRO 4750U with Radeon Graphics", "ryzen 7 pro 4750u"),
        ("Intel Core i9-7920X X-series", "core i9-7920x"),
        ("AMD Ryzen 5 3580U Microsoft Surface® Edition", "ryzen 5 3580u"),
        ("AMD 7th Gen AMD PRO A6-9500 APU", "pro a6-9500"),
        ("CPU", ""),
    ],
)
def test_normalise(cpuinfo: str, normal: str) -> None:
    assert normalise_cpu_model(cpuinfo) == normal
    assert normalise_cpu_model(normal) == normal


@pytest.mark.parametrize(
    ("cpuinfo", "tdp", "key"),
    [
        # The four examples of the brief, TDPs as listed in cpu_power.csv.
        ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 300.0, "xeon platinum 8375c"),
        ("AMD EPYC 7763 64-Core Processor", 280.0, "epyc 7763"),
        ("11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", 28.0, "core i7-1165g7"),
        ("AMD Ryzen 9 5950X 16-Core Processor", 105.0, "ryzen 9 5950x"),
        # Contained, not exact: the key's tokens appear in order in the cpuinfo name.
        ("Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", 115.0, "xeon e5-2670"),
        ("Intel(R) Pentium(R) Dual  CPU  E2180  @ 2.00GHz", 65.0, "pentium e2180"),
        ("AMD A10-7850K Radeon R7, 12 Compute Cores 4C+8G", 95.0, "a10-7850k"),
        # The version token picks v3, never the v1 row above.
        ("Intel(R) Xeon(R) CPU E5-2680 v3 @ 2.50GHz", 120.0, "xeon e5-2680 v3"),
        # Whole tokens: Xeon W-3365 is not the bare Opteron row "3365".
        ("Intel(R) Xeon(R) W-3365 CPU @ 2.70GHz", 270.0, "xeon w-3365"),
        ("Intel(R) Core(TM) i7 CPU         920  @ 2.67GHz", 130.0, "core i7-920"),
    ],
)
def test_lookup(tdp_table: dict[str, float], cpuinfo: str, tdp: float, key: str) -> None:
    assert lookup_tdp(cpuinfo, tdp_table) == (tdp, key)


@pytest.mark.parametrize(
    "cpuinfo",
    [
        "AMD EPYC",  # this development machine's cpuinfo: a VM that hides the model number
        "Intel(R) Xeon(R) CPU @ 2.20GHz",  # cloud VMs hide it too
        "Intel Xeon Processor (Icelake)",
        "AMD EPYC 7B13",  # a cloud-only part the table does not list
        "QEMU Virtual CPU version 2.5+",
        "",
    ],
)
def test_lookup_declines_without_a_model_number(
    tdp_table: dict[str, float], cpuinfo: str
) -> None:
    assert lookup_tdp(cpuinfo, tdp_table) is None


def test_lookup_rules_on_a_small_table() -> None:
    table = {"xeon": 1.0, "3365": 65.0, "xeon e5-2670": 115.0, "ryzen 9": 2.0}
    assert lookup_tdp("Intel(R) Xeon(R) W-3365 CPU", table) is None
    assert lookup_tdp("Intel(R) Xeon(R) CPU E5-2670 v2 @ 2.50GHz", table) is None
    assert lookup_tdp("AMD Ryzen 9 7950X", table) is None
    assert lookup_tdp("AMD Opteron(tm) Processor 3365", table) == (65.0, "3365")
    # Longest key wins; equal lengths resolve alphabetically, whatever the dict order.
    table = {"opteron 3365": 65.0, "3365": 1.0, "b 3365": 3.0, "a 3365": 2.0}
    assert lookup_tdp("AMD Opteron 3365", table) == (65.0, "opteron 3365")
    assert lookup_tdp("a b 3365", table) == (2.0, "a 3365")
    assert model_tokens("xeon e5-2670 v3") == ("xeon", "e5-2670", "v3")


def test_lookup_this_machine(tdp_table: dict[str, float]) -> None:
    """Whatever this machine is, the lookup answers sensibly: None or a key it really contains."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    names = {
        line.split(":", 1)[1].strip()
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
        if line.startswith("model name")
    }
    if not names:
        pytest.skip("/proc/cpuinfo has no 'model name' line (ARM?)")
    for name in names:
        found = lookup_tdp(name, tdp_table)
        if found is not None:
            tdp, key = found
            assert tdp == tdp_table[key]
            assert set(model_tokens(key)) <= set(model_tokens(normalise_cpu_model(name)))


# --- reproducibility ------------------------------------------------------------------------


@pytest.mark.skipif(
    not (REFERENCE_DATA / "global_energy_mix.json").exists(),
    reason="set REFERENCE_DATA_DIR to the raw reference data (not in the repository)",
)
def test_derive_reproduces_committed_tables(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(CONFIG / "sources" / "derive.py"),
         "--data", str(REFERENCE_DATA), "--out", str(tmp_path)],
        check=True, capture_output=True, text=True,
    )
    for name in ("regions.csv", "cpu_tdp.csv"):
        assert (tmp_path / name).read_bytes() == (CONFIG / name).read_bytes(), name
