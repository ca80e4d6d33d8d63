"""Region comparisons, equivalents and units, against figures worked out by hand.

The bundled table's countries used here (2022-2023 figures, gCO2eq/kWh): France 56.0,
Bhutan 23.3, Paraguay 23.8, Albania 24.3 (the three lowest of the 202 countries whose figure
is precise enough to rank: the Central African Republic's 0.0 and Lesotho's 20.0 are not,
see test_greenest.py), Vietnam 475.4 (the median of the 202: 100 lower, 101 higher),
Turkmenistan 1306.0 (the highest).
"""

from __future__ import annotations

import pytest

from carbonmeter import config, units
from carbonmeter.carbon import compare
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import Region, find_region
from carbonmeter.carbon.resolve import resolve
from carbonmeter.report.equivalents import FACTORS, describe, equivalents

FR = find_region("FR")
FR_I = Intensity(FR.g_per_kwh, "FR", "bundled", FR.source, FR.year)


def test_the_three_greenest_other_countries_with_savings():
    # 2 kWh at PUE 1 in France: 2 x 56.0 = 112 g
    got = compare.greenest(2.0, 112.0, FR_I)
    assert [(e.region.code, e.grams, e.saving_g) for e in got] == [
        ("BT", pytest.approx(46.6), pytest.approx(65.4)),  # 2 x 23.3
        ("PY", pytest.approx(47.6), pytest.approx(64.4)),  # 2 x 23.8
        ("AL", pytest.approx(48.6), pytest.approx(63.4)),  # 2 x 24.3
    ]


def test_the_grid_in_use_is_not_its_own_alternative():
    bhutan = Intensity(23.3, "BT", "bundled", "t", 2022)
    got = compare.greenest(1.0, 23.3, bhutan)  # Nepal 24.4 is fourth
    assert [e.region.code for e in got] == ["PY", "AL", "NP"]
    assert got[0].saving_g == pytest.approx(23.3 - 23.8)  # Paraguay would emit more


def test_landmarks_configured_greenest_median_dirtiest():
    # 0.5 kWh x PUE 1.4 = 0.7 kWh delivered; France 0.7 x 56 = 39.2 g emitted
    got = compare.landmarks(0.7, 39.2, FR_I)
    assert [(e.role, e.region.code) for e in got] == [
        ("configured", "FR"), ("greenest", "BT"), ("median", "VN"), ("dirtiest", "TM")]
    assert got[0].grams == 39.2 and got[0].saving_g == 0
    assert got[2].grams == pytest.approx(0.7 * 475.4)  # 332.78 g
    assert got[2].saving_g == pytest.approx(39.2 - 332.78)
    assert got[3].grams == pytest.approx(914.2)  # 0.7 x 1306.0


def test_a_configured_intensity_is_compared_with_countries():
    custom = Intensity(300.0, "custom", "config", "carbon.intensity_g_per_kwh")
    got = compare.landmarks(1.0, 300.0, custom)
    assert got[0].region.name == "configured intensity" and got[0].region.g_per_kwh == 300.0
    assert [e.role for e in got[1:]] == ["greenest", "median", "dirtiest"]
    world = Intensity(475.0, "world", "default", "IEA", 2019)
    assert compare.as_region(world).name == "world average"
    assert [e.region.code for e in compare.greenest(1.0, 475.0, world)] == ["BT", "PY", "AL"]


def _cloud(code: str, provider: str, g: float) -> Region:
    return Region(code, "", code, "cloud", provider, g, 2023, "test", {})


def test_a_cloud_region_is_compared_with_its_providers_regions(monkeypatch):
    """Rows of kind `cloud` (added to the bundled table by the cloud regions work) compare
    with the same provider's regions only, greenest first."""
    table = (find_region("FR"), find_region("SE"),
             _cloud("europe-west1", "gcp", 110.0), _cloud("europe-north1", "gcp", 90.0),
             _cloud("us-east4", "gcp", 380.0), _cloud("eu-north-1", "aws", 10.0))
    monkeypatch.setattr(compare, "regions", lambda: table)
    here = Intensity(110.0, "europe-west1", "gcp", "test", 2023)
    assert compare.region_of(here).provider == "gcp"
    # a code shared by two kinds: the row of the intensity's provider and value wins
    table2 = (*table, Region("SE", "", "Sweden South", "zone", "", 12.0, 2023, "t", {}))
    monkeypatch.setattr(compare, "regions", lambda: table2)
    assert compare.region_of(Intensity(12.0, "SE", "bundled", "t", 2023)).kind == "zone"
    assert compare.region_of(Intensity(find_region("SE").g_per_kwh, "SE", "bundled", "t",
                                       2023)).kind == "country"
    monkeypatch.setattr(compare, "regions", lambda: table)
    # 10 kWh: 1100 g here; 900 g in europe-north1 (saves 200 g); 3800 g in us-east4
    got = compare.landmarks(10.0, 1100.0, here)
    assert [(e.role, e.region.code, e.grams, e.saving_g) for e in got] == [
        ("configured", "europe-west1", 1100.0, 0.0),
        ("", "europe-north1", 900.0, 200.0),
        ("", "us-east4", 3800.0, -2700.0)]
    assert [e.region.code for e in compare.greenest(10.0, 1100.0, here)] == \
        ["europe-north1", "us-east4"]


def test_a_configured_cloud_region_compares_with_its_provider():
    """carbon.cloud as users write it, resolved through the bundled table."""
    cfg = config.load(env={}, overrides={"carbon.cloud": {"provider": "aws",
                                                          "region": "eu-west-3"}})
    here = resolve(cfg.carbon).current()
    row = compare.region_of(here)
    assert (row.kind, row.provider, row.code) == ("cloud", "aws", "eu-west-3")
    others = compare.greenest(1.0, here.g_per_kwh, here)
    assert others and all(e.region.provider == "aws" for e in others)
    assert [e.region.g_per_kwh for e in others] == sorted(e.region.g_per_kwh for e in others)


def test_equivalents_arithmetic():
    car, phone = FACTORS
    assert car.per == 108.1 and "European Environment Agency" in car.source and "2022" in \
        car.source
    assert phone.per == 0.0116 and "EPA" in phone.source
    # 14.46 Wh - 22 h x 0.13 W = 11.60 Wh
    assert phone.per * 1000 == pytest.approx(14.46 - 22 * 0.13)
    got = dict((f.what, n) for f, n in equivalents(1081.0, 1.16))
    assert got[car.what] == pytest.approx(10.0)  # 1081 g / 108.1 g/km
    assert got[phone.what] == pytest.approx(100.0)  # 1.16 kWh / 0.0116 kWh
    assert describe(car, 0.05) == ("50.0", "m driven by an average new car in Europe")
    assert describe(phone, 2.5) == ("2.50", "full smartphone charges")


@pytest.mark.parametrize(("joules", "text"), [
    (0.0123, "0.0123 J"), (12.34, "12.3 J"), (3599, "3599 J"), (3600, "1.00 Wh"),
    (1.8e6, "500 Wh"), (3.6e6, "1.00 kWh"), (7.2e9, "2000 kWh")])
def test_energy_units(joules, text):
    assert units.energy(joules) == text


@pytest.mark.parametrize(("grams", "text"), [
    (0.000123, "0.123 mg"), (0.5, "500 mg"), (1, "1.00 g"), (999, "999 g"), (1500, "1.50 kg")])
def test_mass_units(grams, text):
    assert units.mass(grams) == text


def test_durations():
    assert units.duration(0.0521) == "0.052 s"
    assert units.duration(3723.4) == "1:02:03.4 (3723.4 s)"
