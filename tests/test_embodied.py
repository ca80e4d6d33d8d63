"""Embodied carbon: accrued per second of runtime, exported as a counter promtool accepts."""

from __future__ import annotations

import subprocess
import time

import pytest

from carbonmeter import config, state
from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.config import ConfigError, HardwareConfig
from carbonmeter.embodied import Embodied, grams_per_second
from carbonmeter.sampler import Sampler
from carbonmeter.sinks.prometheus import Renderer
from carbonmeter.snapshot import ProviderStatus
from tests.helpers import require


def test_rate_is_kg_over_lifetime_in_seconds():
    # 1200 kg over 4 Julian years: 1,200,000 g / (4 x 365.25 x 86,400 s = 126,230,400 s)
    assert grams_per_second(HardwareConfig(1200, 4)) == pytest.approx(0.0095064, rel=1e-4)
    assert grams_per_second(HardwareConfig(1200, 4)) == pytest.approx(1_200_000 / 126_230_400)


def test_accrues_by_elapsed_monotonic_time_only():
    e = Embodied({"host": HardwareConfig(1200, 4), "gpu-0": HardwareConfig(150, 5)})
    e.advance(1000.0)  # the first sample starts the clock: nothing yet
    assert [t.grams for t in e.totals()] == [0.0, 0.0]
    e.advance(1010.0)
    e.advance(1005.0)  # a clock never goes back; if a caller's did, nothing is taken away
    e.advance(1100.0)
    host, gpu = e.totals()
    assert (host.device, gpu.device) == ("host", "gpu-0")
    assert host.grams == pytest.approx(100 * 1_200_000 / 126_230_400)  # 0.950642 g
    assert gpu.grams == pytest.approx(100 * 150_000 / (5 * 31_557_600))  # 0.095064 g


def test_totals_continue_through_a_restart_and_downtime_accrues_nothing(tmp_path):
    """Through a real state file: what a part had accrued continues; a part no longer in the
    configuration is not brought back; the time the exporter was down is not counted (it
    measured nothing then, as carbonmeter_unmeasured_seconds_total says for the devices)."""
    intensity = Static(Intensity(56.0, "FR", "bundled", "t"))
    parts = {"host": HardwareConfig(1200, 4), "gpu-0": HardwareConfig(150, 5)}
    old = Sampler([], intensity, pue=1.0, interval=3600, embodied=Embodied(parts))
    old.sample()
    time.sleep(0.05)
    old.sample()
    saved = {t.device: t.grams for t in old.latest.embodied}
    store = state.Store(tmp_path / "state.json")
    assert store.save("boot", old.export())
    time.sleep(0.3)  # down
    new = Sampler([], intensity, pue=1.0, interval=3600,
                  embodied=Embodied({"host": HardwareConfig(1200, 4)}))
    new.restore(store.load(), "boot")
    assert {t.device: t.grams for t in new.latest.embodied} == {"host": saved["host"]}
    new.sample()
    time.sleep(0.05)
    new.sample()
    (host,) = new.latest.embodied
    rate = grams_per_second(parts["host"])
    assert rate * 0.05 < host.grams - saved["host"] < rate * 0.25  # not the 0.3 s down


def test_configured_devices_and_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("embodied:\n  devices:\n    host: {kg_co2eq: 1200, lifetime_years: 4}\n")
    assert config.load(path, env={}).embodied.devices == {"host": HardwareConfig(1200.0, 4.0)}
    path.write_text("embodied:\n  devices:\n    host: {kg_co2eq: 1200, lifetime_years: 0}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: embodied.devices.host.lifetime_years: 0 is "
                                          r"out of range from 0.01 to 100"):
        config.load(path, env={})
    path.write_text("embodied:\n  devices:\n    host: {kg_co2: 1200, lifetime_years: 4}\n")
    with pytest.raises(ConfigError, match=r"embodied.devices.host: unknown key 'kg_co2'; did you "
                                          r"mean 'kg_co2eq'"):
        config.load(path, env={})


def test_exported_with_provider_metrics_and_promtool_clean():
    e = Embodied({"host": HardwareConfig(1200, 4)})
    marginal = Intensity(394.85, "CAISO_NORTH", "watttime", "test", signal="marginal")
    statuses = (ProviderStatus("watttime", True, 2, marginal, 12.5),
                ProviderStatus("electricitymaps", False, 3, None, None, "HTTP 500"))
    s = Sampler([], Static(Intensity(56.0, "FR", "bundled", "t")), pue=1.0, interval=3600,
                embodied=e, providers=lambda: statuses)
    s.sample()
    time.sleep(0.05)
    s.sample()
    body, _ = Renderer(lambda: s.latest).render("", False)
    text = body.decode()
    line = next(x for x in text.splitlines()
                if x.startswith('carbonmeter_embodied_emissions_grams_total{device="host"}'))
    assert 0.05 * 0.0095 < float(line.split()[1]) < 5 * 0.0095  # 0.05 s or so of runtime
    for expected in [
        '# TYPE carbonmeter_embodied_emissions_grams_total counter',
        'carbonmeter_carbon_intensity_provider_up{provider="watttime"} 1.0',
        'carbonmeter_carbon_intensity_provider_up{provider="electricitymaps"} 0.0',
        'carbonmeter_carbon_intensity_age_seconds{provider="watttime"} 12.5',
        'carbonmeter_carbon_intensity_provider_grams_per_kilowatt_hour{provider="watttime",'
        'region="CAISO_NORTH",signal="marginal"} 394.85',
        'carbonmeter_carbon_intensity_provider_errors_total{provider="electricitymaps"} 3.0',
    ]:
        assert expected in text, expected
    assert 'age_seconds{provider="electricitymaps"}' not in text  # no value, no age
    out = subprocess.run([require("promtool"), "check", "metrics"], input=body,
                         capture_output=True)
    assert out.returncode == 0 and out.stdout == b"" and out.stderr == b"", out
