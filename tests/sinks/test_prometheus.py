"""The /metrics endpoint: names from the design, promtool-clean, negotiated, cached."""

from __future__ import annotations

import gzip
import subprocess
import threading
import time

import pytest

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes.base import Device, Reading
from carbonmeter.sampler import Sampler
from carbonmeter.server.endpoint import make_server
from carbonmeter.sinks.prometheus import Renderer
from tests.fakes.probe import ScriptedProbe
from tests.helpers import http_get, require

PKG = Device("package-0", "cpu", "rapl", wrap_uj=1e12)
GPU = Device("gpu-0", "gpu", "nvml")


def scripted() -> ScriptedProbe:
    """A package counter (2 J per read) and a GPU at 50 W; `fail` makes it raise."""
    return ScriptedProbe([PKG, GPU], script=lambda n: [
        Reading(PKG, counter_uj=2_000_000 * n), Reading(GPU, power_w=50.0)])


@pytest.fixture
def sampler():
    s = Sampler([scripted()], Static(Intensity(56.0, "FR", "bundled", "test")), pue=1.5,
                interval=3600)
    s.sample()
    time.sleep(0.01)
    s.sample()
    return s


def test_exposition_has_the_design_names_and_passes_promtool(sampler):
    body, ctype = Renderer(lambda: sampler.latest).render("", False)
    text = body.decode()
    assert ctype.startswith("text/plain; version=0.0.4")
    for line in [
        'carbonmeter_energy_joules_total{device="package-0",kind="cpu",source="rapl"} 2.0',
        'carbonmeter_host_energy_joules_total ',
        'carbonmeter_carbon_intensity_grams_per_kilowatt_hour{provider="bundled",region="FR"} 56.0',
        "carbonmeter_pue_ratio 1.5",
        'carbonmeter_probe_up{probe="scripted"} 1.0',
        'carbonmeter_probe_errors_total{probe="scripted"} 0.0',
        'carbonmeter_build_info{python_version=',
        '# TYPE carbonmeter_power_watts gauge',
        '# TYPE carbonmeter_emissions_grams_total counter',
        '# TYPE carbonmeter_host_power_watts gauge',
    ]:
        assert line in text, line
    promtool = require("promtool")
    out = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert out.returncode == 0 and out.stdout == b"" and out.stderr == b"", out


def test_emissions_apply_pue_and_intensity(sampler):
    pkg = next(d for d in sampler.latest.devices if d.device.id == "package-0")
    assert pkg.energy_j == pytest.approx(2.0)
    assert pkg.emissions_g == pytest.approx(2.0 / 3.6e6 * 1.5 * 56.0)
    assert sampler.latest.host_energy_j == pytest.approx(
        sum(d.energy_j for d in sampler.latest.devices))


def test_openmetrics_negotiation_and_gzip(sampler):
    r = Renderer(lambda: sampler.latest)
    body, ctype = r.render("application/openmetrics-text; version=1.0.0", True)
    assert ctype.startswith("application/openmetrics-text")
    text = gzip.decompress(body).decode()
    assert text.endswith("# EOF\n")
    assert "# UNIT carbonmeter_energy_joules joules" in text
    # same snapshot, same bytes: rendered once, shared by every scrape
    assert r.render("application/openmetrics-text; version=1.0.0", True)[0] is body


def test_failing_probe_is_counted_and_down(sampler):
    probe = sampler.probes[0]
    probe.fail = OSError("device fell off the bus")
    sampler.sample()
    status = sampler.latest.probes[0]
    assert not status.up and status.errors_total == 1 and "fell off the bus" in status.last_error
    # totals survive the failure; the lost devices' power is no longer claimed
    assert {d.device.id: d.power_w for d in sampler.latest.devices} == {"package-0": None,
                                                                          "gpu-0": None}
    assert sampler.latest.host_energy_j >= 2.0
    probe.fail = None
    sampler.sample()
    assert sampler.latest.probes[0].up


def test_http_endpoints(sampler):
    alive = threading.Event()
    alive.set()
    server = make_server("127.0.0.1", 0, Renderer(lambda: sampler.latest).render, alive.is_set)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, headers, body = http_get(f"{base}/metrics", {"Accept-Encoding": "gzip"})
        assert status == 200 and headers["Content-Encoding"] == "gzip"
        assert b"carbonmeter_host_energy_joules_total" in gzip.decompress(body)
        status, _, body = http_get(f"{base}/")
        assert status == 200 and b'href="/metrics"' in body
        assert http_get(f"{base}/healthz")[0] == 200
        alive.clear()
        status, _, body = http_get(f"{base}/healthz")
        assert (status, body) == (503, b"sampler stalled\n")
        assert http_get(f"{base}/nope")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
