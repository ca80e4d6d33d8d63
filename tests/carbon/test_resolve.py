"""Carbon intensity resolution and the CO2eq arithmetic, against hand-computed figures."""

from __future__ import annotations

import pytest

from carbonmeter import config
from carbonmeter.carbon import regions as carbon
from carbonmeter.carbon.intensity import Intensity, grams
from carbonmeter.carbon.resolve import resolve
from carbonmeter.config import ConfigError


def carbon_cfg(**kw):
    return config.load(env={}, overrides={f"carbon.{k}": v for k, v in kw.items()}).carbon


def test_no_region_is_the_world_average_said_plainly():
    i = resolve(carbon_cfg()).current()
    assert (i.g_per_kwh, i.region, i.provider) == (475.0, "world", "default")
    assert "IEA" in i.source


@pytest.mark.parametrize("name", ["FR", "fr", "FRA", "fra", "France"])
def test_region_by_alpha2_alpha3_and_name(name):
    i = resolve(carbon_cfg(region=name)).current()
    fr = carbon.find_region("FR")
    assert i.region == "FR" and i.provider == "bundled"
    assert i.g_per_kwh == fr.g_per_kwh and i.year == fr.year
    assert "Our World in Data" in i.source


def test_unknown_region_names_close_matches():
    with pytest.raises(ConfigError, match=r"unknown region 'Frnace'; close matches: FR \(France\)"):
        resolve(carbon_cfg(region="Frnace"))


def test_fixed_intensity_overrides_region():
    i = resolve(carbon_cfg(region="PL", intensity_g_per_kwh=123)).current()
    assert (i.g_per_kwh, i.region, i.provider) == (123.0, "PL", "config")


def test_mix_is_the_weighted_average_of_source_intensities():
    # 70 % nuclear (29) + 10 % hydro (26) + 20 % gas (743) = 20.3 + 2.6 + 148.6 = 171.5
    i = resolve(carbon_cfg(mix={"nuclear": 0.7, "hydro": 0.1, "natural_gas": 0.2}))
    assert i.current().g_per_kwh == pytest.approx(171.5)
    # shares need not sum to 1: 1 coal + 1 wind = (995 + 26) / 2
    i = resolve(carbon_cfg(mix={"coal": 1, "wind": 1}))
    assert i.current().g_per_kwh == pytest.approx(510.5)


def test_mix_uses_overridden_source_intensities():
    per_source = dict(carbon_cfg().source_intensities, coal=1000)
    i = resolve(carbon_cfg(mix={"coal": 0.5, "solar": 0.5}, source_intensities=per_source))
    assert i.current().g_per_kwh == pytest.approx((1000 + 48) / 2)


def test_grams_is_energy_times_pue_times_intensity():
    i = Intensity(400.0, "X", "config", "test")
    # 3.6 MJ = 1 kWh; x PUE 1.5 x 400 g/kWh = 600 g
    assert grams(3.6e6, 1.5, i) == pytest.approx(600.0)
    assert grams(1.0, 1.0, i) == pytest.approx(400 / 3.6e6)
