"""Grid intensities that cannot be true are refused like a failed fetch, never priced in.

The providers run their real code (urllib, JSON, unit conversion) against the local
stand-ins of tests/fakes/grid_apis.py, answering out-of-range figures: 1e12 g/kWh from
Electricity Maps, 1e308 lb/MWh from WattTime (+Inf once converted), NaN from a JSON
service. The check is the configuration's own limit, 0 to 5,000 g/kWh, applied after
conversion; the last good value stays in use, the provider's error counter and log say why.
"""

from __future__ import annotations

import json
import logging
import math
import time

import pytest

from carbonmeter import config, state
from carbonmeter.carbon import providers
from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.carbon.providers.live import LiveSource
from carbonmeter.probes.base import Device, ProbeRead, Reading
from carbonmeter.sampler import Sampler
from tests.fakes.grid_apis import EM_TOKEN, WT_PASSWORD, WT_USER, GridApis, Reply

FALLBACK = Static(Intensity(56.0, "FR", "bundled", "test fallback"))
EM = "/v3/carbon-intensity/latest"


@pytest.fixture
def apis():
    with GridApis() as a:
        yield a


@pytest.fixture(autouse=True)
def secrets(monkeypatch):
    monkeypatch.setenv("CM_TEST_EM_TOKEN", EM_TOKEN)
    monkeypatch.setenv("CM_TEST_WT_PASSWORD", WT_PASSWORD)


def poller(**entry):
    cfgs = config.load(env={}, overrides={"carbon.providers": [entry]}).carbon.providers
    return providers.build(cfgs, "test.yaml")[0]


class Watts:
    """A device drawing 100 W (a power source, integrated over the interval)."""

    name = "steady"
    may_block = False
    devices = (Device("box", "platform", "steady"),)
    covers = frozenset({"platform"})

    def read(self) -> ProbeRead:
        return ProbeRead([Reading(self.devices[0], power_w=100.0)], [])

    def close(self) -> None:
        pass


def test_electricitymaps_answering_1e12_is_refused_and_the_last_good_value_kept(apis, caplog):
    p = poller(type="electricitymaps", zone="DE", url=apis.url,
               secret_env="CM_TEST_EM_TOKEN", timeout_seconds=2)
    p.poll_once()
    assert p.status().value.g_per_kwh == 302.0
    apis.em_value = 1e12
    p.poll_once()
    s = p.status()
    assert not s.up and s.errors_total == 1 and s.value.g_per_kwh == 302.0
    assert "refused 1000000000000.0 gCO2eq/kWh is outside 0 to 5000" in s.last_error
    assert "refused" in caplog.text
    assert p.fresh().g_per_kwh == 302.0  # priced at the last good value while it is fresh


def test_watttime_1e308_lb_per_mwh_is_refused_after_conversion(apis):
    p = poller(type="watttime", zone="CAISO_NORTH", username=WT_USER,
               secret_env="CM_TEST_WT_PASSWORD", url=apis.url)
    apis.wt_moer = 1e308
    p.poll_once()
    s = p.status()
    assert not s.up and s.value is None
    assert "refused 4.5359237e+307 gCO2eq/kWh is outside 0 to 5000" in s.last_error


@pytest.mark.parametrize("body", [b'{"v": NaN}', b'{"v": -1}', b'{"v": 1e400}', b'{"v": 5001}'])
def test_a_json_service_answering_outside_the_range(apis, body):
    apis.script("/custom", Reply(body=body))
    p = poller(type="http", url=f"{apis.url}/custom", json_path="v", unit="g_per_kwh")
    p.poll_once()
    s = p.status()
    assert not s.up and s.value is None and s.errors_total == 1, s.last_error


def test_emissions_stay_finite_and_checkpoints_keep_working(apis, tmp_path):
    """Before: 1e308 lb/kWh priced in made emissions +Inf, then NaN, and every checkpoint,
    the one at SIGTERM included, failed. Now the interval is priced at the last good value."""
    p = poller(type="http", url=f"{apis.url}/custom", json_path="v", unit="lb_per_kwh",
               staleness_seconds=3600)
    apis.custom["/custom"] = {"v": 1.0}  # 453.6 g/kWh
    p.poll_once()
    live = LiveSource([p], FALLBACK)
    sampler = Sampler([Watts()], live, pue=1.0, interval=1.0)
    store = state.Store(tmp_path / "state.json")
    sampler.sample()
    time.sleep(0.05)
    sampler.sample()
    apis.custom["/custom"] = {"v": 1e308}
    p.poll_once()
    assert not p.status().up and "refused inf gCO2eq/kWh" in p.status().last_error
    for _ in range(3):
        time.sleep(0.02)
        snap = sampler.sample()
        assert snap.intensity.g_per_kwh == pytest.approx(453.59237)
        assert all(math.isfinite(d.emissions_g) for d in snap.devices)
        assert store.save("boot", sampler.export())
    saved = json.loads((tmp_path / "state.json").read_text())
    assert math.isfinite(saved["devices"][0]["emissions_g"])


def test_the_file_provider_refuses_an_absurd_number(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    f = tmp_path / "ci.txt"
    f.write_text("120\n")
    p = poller(type="file", path=str(f), unit="g_per_kwh")
    p.poll_once()
    f.write_text("inf\n")
    p.poll_once()
    s = p.status()
    assert s.value.g_per_kwh == 120.0 and not s.up
