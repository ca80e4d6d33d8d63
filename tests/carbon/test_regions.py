"""Region lookups (countries, states, provinces, zones, cloud regions) and unit conversions,
against figures computed by hand from the published sources."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carbonmeter import config
from carbonmeter.carbon import resolve as resolving
from carbonmeter.carbon.regions import find_cloud, find_region
from carbonmeter.config import ConfigError
from carbonmeter.units import to_g_per_kwh


def resolve(**overrides):
    cfg = config.load(env={}, overrides={f"carbon.{k}": v for k, v in overrides.items()})
    return resolving.resolve(cfg.carbon).current()


@pytest.mark.parametrize(("name", "code", "kind", "g"), [
    ("FR", "FR", "country", 56.0),
    ("fra", "FR", "country", 56.0),
    (" France ", "FR", "country", 56.0),
    ("CA", "CA", "country", 170.0),  # Canada, not California
    ("Georgia", "GE", "country", 167.6),  # the country wins the name; the state is US-GA
    ("US-GA", "US-GA", "state", 325.4),
    ("US-CA", "US-CA", "state", 179.1),  # eGRID2023 394.769 lb CO2e/MWh x 0.45359237
    ("us-ca", "US-CA", "state", 179.1),
    ("California", "US-CA", "state", 179.1),
    ("US-TX", "US-TX", "state", 349.8),  # 771.179 lb/MWh
    ("district of columbia", "US-DC", "state", 179.2),
    ("CA-QC", "CA-QC", "province", 31.2),  # mix x lifecycle factors, see test_tables
    ("Quebec", "CA-QC", "province", 31.2),
    ("ca-bc", "CA-BC", "province", 60.7),
    ("CN-SC", "CN-SC", "province", 156.4),  # MEE/NBS 2023, gCO2/kWh
    ("Inner Mongolia", "CN-NM", "province", 647.9),
    ("SE3", "SE3", "zone", 27.0),  # ENTSO-E 2025
    ("no4", "NO4", "zone", 51.7),
    ("FI", "FI", "country", 79.2),  # Finland's single bidding zone is the country
])
def test_grid_region_lookup(name, code, kind, g):
    r = find_region(name)
    assert (r.code, r.kind, r.g_per_kwh) == (code, kind, g)
    i = resolve(region=name)
    assert (i.region, i.provider, i.g_per_kwh, i.year) == (code, "bundled", g, r.year)


def test_region_rows_keep_their_fields_and_mix():
    qc = find_region("CA-QC")
    assert (qc.alpha3, qc.provider, qc.year) == ("", "", 2023)
    assert qc.mix["hydro"] == pytest.approx(0.9209) and "total_twh" not in qc.mix
    assert "Canada Energy Regulator" in qc.source
    assert "CO2-equivalent" in find_region("US-CA").source
    assert "CO2 only" in find_region("CN-SC").source


@pytest.mark.parametrize(("provider", "region", "code", "g", "year"), [
    ("aws", "eu-west-3", "eu-west-3", 51.1, None),  # EEA via CCF; CCF states no year
    ("aws", "US-EAST-1", "us-east-1", 379.1, 2020),  # eGRID2020 NERC SERC 379.069
    ("azure", "WestEurope", "westeurope", 328.4, None),
    ("azure", "francecentral", "francecentral", 51.3, 2021),  # 51.28, carbonfootprint.com
    ("gcp", "europe-west9", "europe-west9", 34.0, 2023),  # Google 2023
    ("gcp", "us-central1", "us-central1", 430.0, 2023),
])
def test_cloud_region_lookup(provider, region, code, g, year):
    r = find_cloud(provider, region)
    assert (r.code, r.kind, r.provider, r.g_per_kwh, r.year) == (code, "cloud", provider, g, year)
    i = resolve(cloud={"provider": provider, "region": region})
    assert (i.region, i.provider, i.g_per_kwh, i.year) == (f"{provider}/{code}", "bundled", g,
                                                           year)
    assert i.source == r.source


def test_unknown_names_say_what_exists():
    with pytest.raises(ConfigError, match=r"unknown region 'Californa'; close matches: "
                                          r"US-CA \(California\)"):
        find_region("Californa")
    with pytest.raises(ConfigError, match=r"'eu-west-3' is a cloud region of aws; use "
                                          r"carbon.cloud: \{provider: aws, region: eu-west-3\}"):
        find_region("eu-west-3")
    with pytest.raises(ConfigError, match=r"unknown aws region 'eu-west-4'; close matches: "
                                          r"eu-west-3, eu-west-2, eu-west-1.*--provider aws"):
        find_cloud("aws", "eu-west-4")
    with pytest.raises(ConfigError, match=r"US-CA, CA-QC or CN-SC.*SE3"):
        find_region("Atlantis")


@pytest.mark.parametrize(("cloud", "error"), [
    ({"provider": "ibm", "region": "x"}, r"carbon.cloud.provider: 'ibm' is not one of aws, "
                                         r"azure, gcp"),
    ({"provider": "aws"}, r"carbon.cloud: missing key 'region' \(required: provider, region\)"),
    ({"provider": "aws", "regoin": "x"}, r"carbon.cloud: unknown key 'regoin'; did you mean "
                                         r"'region'"),
    ("aws/eu-west-3", r"carbon.cloud: must be a mapping of keys, got 'aws/eu-west-3'"),
])
def test_cloud_config_errors(tmp_path, cloud, error):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"carbon": {"cloud": cloud}}))
    with pytest.raises(ConfigError, match=error):
        config.load(path, env={})


def test_region_and_cloud_together_is_an_error():
    with pytest.raises(ConfigError, match=r"carbon\.region and carbon\.cloud are both set"):
        config.load(env={}, overrides={"carbon.region": "FR",
                                       "carbon.cloud": {"provider": "aws", "region": "eu-west-3"}})


def test_cloud_from_the_environment():
    cfg = config.load(env={"CARBONMETER_CARBON_CLOUD": "{provider: gcp, region: europe-west9}"})
    assert resolving.resolve(cfg.carbon).current().g_per_kwh == 34.0


@pytest.mark.parametrize(("value", "unit", "g"), [
    (1000.0, "lb_per_mwh", 453.59237),  # 1 lb = 0.45359237 kg exactly
    (452.541, "lb_per_mwh", 205.26914471217),  # eGRID2016 California
    (870.5, "lb_per_mwh", 394.852158085),  # a WattTime MOER
    (1.0, "lb_per_kwh", 453.59237),
    (300.0, "kg_per_mwh", 300.0),  # kg/MWh = g/kWh
    (0.3, "kg_per_kwh", 300.0),
    (0.3, "t_per_mwh", 300.0),
    (300_000.0, "g_per_mwh", 300.0),
    (300.0, "g_per_kwh", 300.0),
])
def test_unit_conversions(value, unit, g):
    assert to_g_per_kwh(value, unit) == pytest.approx(g, rel=1e-12)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbonmeter", "regions", *args],
                          capture_output=True, text=True, timeout=30)


def test_regions_command_lists_intensity_source_and_year():
    out = run("--search", "quebec", "--provider", "province")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:5] == ["provider", "code", "name", "gCO2eq/kWh", "year"]
    assert len(lines) == 2
    assert lines[1].split()[:5] == ["province", "CA-QC", "Quebec", "31.2", "2023"]
    assert "Canada Energy Regulator" in lines[1]
    out = run("--provider", "GCP")
    assert len(out.stdout.splitlines()) == 1 + 41
    assert "41 regions" in out.stderr
    out = run("--search", "paris")
    codes = [line.split()[1] for line in out.stdout.splitlines()[1:]]
    assert codes == ["eu-west-3", "francecentral", "europe-west9"]
    out = run()
    assert len(out.stdout.splitlines()) == 1 + 461
    out = run("--search", "atlantis")
    assert out.returncode == 1 and "no region matches" in out.stderr
