"""Live intensity providers against local servers answering like the real services.

tests/fakes/grid_apis.py reproduces each service's documented request and response shapes
(Electricity Maps v3, WattTime v3, the UK Carbon Intensity API) and the ways they fail; the
providers run their real code against it: urllib, headers, JSON, unit conversion. Secrets
are real environment variables and files; the tests check they never reach a log line.
"""

from __future__ import annotations

import email.utils
import logging
import os
import time
from pathlib import Path

import pytest

from carbonmeter import config
from carbonmeter.carbon import providers
from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.carbon.providers.live import LiveSource, Poller
from carbonmeter.carbon.providers.watttime import WattTime
from carbonmeter.config import ConfigError
from carbonmeter.sampler import Sampler
from carbonmeter.server.endpoint import make_server
from carbonmeter.sinks.prometheus import Renderer
from tests.fakes.grid_apis import EM_TOKEN, WT_PASSWORD, WT_USER, GridApis, Reply
from tests.helpers import free_port, http_get, wait_for

EM = "/v3/carbon-intensity/latest"
SECRETS = (EM_TOKEN, WT_PASSWORD, "wt-bearer-")
LB = 0.45359237
FALLBACK = Static(Intensity(56.0, "FR", "bundled", "test fallback"))


@pytest.fixture
def apis():
    with GridApis() as a:
        yield a


@pytest.fixture(autouse=True)
def secrets(monkeypatch):
    monkeypatch.setenv("CM_TEST_EM_TOKEN", EM_TOKEN)
    monkeypatch.setenv("CM_TEST_WT_PASSWORD", WT_PASSWORD)
    monkeypatch.setenv("CM_TEST_WRONG", "wrong-Tok3n-never-in-logs")


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog):
    """Every test here also asserts that no secret was logged, whatever happened."""
    caplog.set_level(logging.DEBUG)
    yield
    for s in (*SECRETS, "wrong-Tok3n"):
        assert s not in caplog.text


def poller(**entry) -> Poller:
    cfgs = config.load(env={}, overrides={"carbon.providers": [entry]}).carbon.providers
    return providers.build(cfgs, "test.yaml")[0]


def em(apis: GridApis, **kw) -> Poller:
    return poller(type="electricitymaps", zone="DE", url=apis.url, secret_env="CM_TEST_EM_TOKEN",
                  timeout_seconds=2, **kw)


# --- each provider, as documented ---------------------------------------------------------------


def test_electricitymaps_latest_with_auth_token(apis):
    p = em(apis, refresh_seconds=120)
    assert p.poll_once() == 120  # the value is kept for the data period
    s = p.status()
    assert s.up and s.errors_total == 0 and s.age_seconds < 1
    assert (s.value.g_per_kwh, s.value.region, s.value.provider, s.value.signal) == (
        302.0, "DE", "electricitymaps", "average")
    assert "lifecycle, estimated" in s.value.source
    req = apis.hits(EM)[0]
    assert req.query == {"zone": "DE"} and req.headers["auth-token"] == EM_TOKEN


def test_electricitymaps_wrong_token_is_401_and_not_logged(apis, caplog):
    p = poller(type="electricitymaps", zone="DE", url=apis.url, secret_env="CM_TEST_WRONG")
    p.poll_once()
    s = p.status()
    assert not s.up and s.value is None and s.errors_total == 1
    assert "HTTP 401" in s.last_error and "wrong-Tok3n" not in s.last_error
    assert "HTTP 401" in caplog.text


def test_secret_file_is_read_and_a_missing_secret_stops_at_start(apis, tmp_path):
    token = tmp_path / "token"
    token.write_text(EM_TOKEN + "\n")
    p = poller(type="electricitymaps", zone="FR", url=apis.url, secret_file=str(token))
    p.poll_once()
    assert p.status().up
    with pytest.raises(ConfigError, match=r"test.yaml: carbon.providers\[0\].secret_env: "
                                          r"environment variable CM_TEST_UNSET is not set"):
        poller(type="electricitymaps", zone="FR", secret_env="CM_TEST_UNSET")
    with pytest.raises(ConfigError, match=r"secret_file: cannot read .*nope"):
        poller(type="electricitymaps", zone="FR", secret_file=str(tmp_path / "nope"))


def test_watttime_logs_in_converts_moer_and_labels_it_marginal(apis):
    p = poller(type="watttime", zone="CAISO_NORTH", username=WT_USER,
               secret_env="CM_TEST_WT_PASSWORD", url=apis.url)
    p.poll_once()
    v = p.status().value
    # 870.5 lb/MWh x 0.45359237 kg/lb = 394.8522 kg/MWh = g/kWh
    assert v.g_per_kwh == pytest.approx(394.8522, abs=1e-4)
    assert v.g_per_kwh == pytest.approx(870.5 * LB)
    assert (v.signal, v.region, v.provider) == ("marginal", "CAISO_NORTH", "watttime")
    assert "MOER (marginal)" in v.source and "lbs_co2_per_mwh" in v.source
    q = apis.hits("/v3/forecast")[0].query
    assert q == {"region": "CAISO_NORTH", "signal_type": "co2_moer", "horizon_hours": "0"}
    p.poll_once()
    assert apis.logins == 1  # the token is reused while valid


def test_watttime_logs_in_again_when_the_token_expires(apis):
    now = [0.0]
    wt = WattTime(config.ProviderConfig(type="watttime", zone="CAISO_NORTH", username=WT_USER,
                                  url=apis.url, secret_env="CM_TEST_WT_PASSWORD"),
                  "watttime", providers.http.Secret("t", "CM_TEST_WT_PASSWORD", None),
                  clock=lambda: now[0])
    wt.fetch()
    apis.expire_tokens()  # the server forgot it early: 401, log in again, once
    assert wt.fetch().intensity.g_per_kwh == pytest.approx(870.5 * LB)
    assert apis.logins == 2
    now[0] = 26 * 60  # tokens live 30 minutes: renewed after 25 without waiting for a 401
    wt.fetch()
    assert apis.logins == 3 and len(apis.hits("/v3/forecast")) == 4


def test_watttime_wrong_password_names_where_it_came_from(apis):
    p = poller(type="watttime", zone="CAISO_NORTH", username=WT_USER, secret_env="CM_TEST_WRONG",
               url=apis.url)
    p.poll_once()
    err = p.status().last_error
    assert "HTTP 401" in err and "environment variable CM_TEST_WRONG" in err
    assert "wrong-Tok3n" not in err


def test_watttime_units_missing_is_an_error_and_the_last_value_stays(apis):
    p = poller(type="watttime", zone="CAISO_NORTH", username=WT_USER,
               secret_env="CM_TEST_WT_PASSWORD", url=apis.url)
    p.poll_once()
    apis.wt_units = None
    apis.wt_moer = 1.0
    p.poll_once()
    s = p.status()
    assert not s.up and "no meta.units" in s.last_error
    assert s.value.g_per_kwh == pytest.approx(870.5 * LB)
    apis.wt_units = "furlongs"
    p.poll_once()
    assert "unknown units 'furlongs'" in p.status().last_error


@pytest.mark.parametrize(("zone", "path", "value", "region", "which"), [
    (None, "/intensity", 263.0, "GB", "actual"),
    ("13", "/regional/regionid/13", 187.0, "GB-13", "forecast"),
    ("RG10", "/regional/postcode/RG10", 187.0, "GB-12", "forecast"),
])
def test_carbonintensity_uk_national_and_regional(apis, zone, path, value, region, which):
    entry = {"type": "carbonintensity_uk", "url": apis.url}
    if zone:
        entry["zone"] = zone
    p = poller(**entry)
    p.poll_once()
    v = p.status().value
    assert (v.g_per_kwh, v.region) == (value, region)
    assert which in v.source
    assert apis.hits(path)


def test_carbonintensity_uk_uses_the_forecast_until_the_actual_is_measured(apis):
    apis.uk_actual = None
    p = poller(type="carbonintensity_uk", url=apis.url)
    p.poll_once()
    v = p.status().value
    assert v.g_per_kwh == 266.0 and "forecast for 2018-01-20T12:00Z" in v.source


def test_carbonintensity_uk_regional_data_as_one_object(apis):
    apis.script("/regional/regionid/13", Reply(body={"data": {
        "regionid": 13, "shortname": "London", "data": [
            {"from": "a", "to": "b", "intensity": {"forecast": 99, "index": "low"}}]}}))
    p = poller(type="carbonintensity_uk", zone="13", url=apis.url)
    p.poll_once()
    assert p.status().value.g_per_kwh == 99.0


def test_http_json_path_unit_and_secret_header(apis):
    apis.custom["/grid"] = {"data": [{"value": 0.25, "unit": "kg/kWh"}]}
    p = poller(type="http", url=f"{apis.url}/grid?site=7", json_path="data[0].value",
               unit="kg_per_kwh", headers={"Authorization": "Bearer ${secret}", "X-Site": "7"},
               secret_env="CM_TEST_EM_TOKEN", zone="site-7", name="operator")
    p.poll_once()
    v = p.status().value
    assert (v.g_per_kwh, v.region, v.provider) == (250.0, "site-7", "operator")
    assert "?site" not in v.source  # query strings may carry keys: never shown
    h = apis.hits("/grid")[0].headers
    assert h["authorization"] == f"Bearer {EM_TOKEN}" and h["x-site"] == "7"


@pytest.mark.parametrize(("body", "path", "error"), [
    ({"data": []}, "data[0].value", "no item 0 in data (0 items)"),
    ({"data": [{"v": 1}]}, "data.0.value", "no 'value' in data[0]"),
    ({"data": [{"value": "n/a"}]}, "data[0].value", '"n/a", not a number'),
    ({"data": [{"value": None}]}, "data[0].value", "null, not a number"),
    ({"data": [{"value": -3}]}, "data[0].value", "not a usable intensity"),
    ([1, 2], "data", "no 'data' in the response"),
])
def test_http_json_bad_answers_say_where(apis, body, path, error):
    apis.custom["/grid"] = body
    p = poller(type="http", url=f"{apis.url}/grid", json_path=path, unit="g_per_kwh")
    p.poll_once()
    assert error in p.status().last_error


def test_http_needs_url_path_and_unit():
    with pytest.raises(ConfigError, match=r"carbon.providers\[0\].unit: required for type http "
                                          r"\(one of g_per_kwh, kg_per_mwh"):
        poller(type="http", url="http://127.0.0.1:1/x", json_path="a")
    with pytest.raises(ConfigError, match=r"json_path: 'a\.\.b' is not a path"):
        poller(type="http", url="http://127.0.0.1:1/x", json_path="a..b", unit="g_per_kwh")
    with pytest.raises(ConfigError, match=r"headers: \$\{secret\} is used but neither"):
        poller(type="http", url="http://127.0.0.1:1/x", json_path="a", unit="g_per_kwh",
               headers={"Authorization": "Bearer ${secret}"})


def test_file_provider_number_json_and_age(tmp_path):
    f = tmp_path / "ci.txt"
    f.write_text("800\n")
    p = poller(type="file", path=str(f), unit="lb_per_mwh", staleness_seconds=60)
    p.poll_once()
    assert p.status().value.g_per_kwh == pytest.approx(800 * LB)  # 362.873896
    old = time.time() - 100
    os.utime(f, (old, old))  # a job that stopped writing 100 s ago
    p.poll_once()
    assert p.status().age_seconds == pytest.approx(100, abs=2)
    assert p.fresh() is None  # older than staleness_seconds
    j = tmp_path / "ci.json"
    j.write_text('{"grid": {"intensity": 0.2}}')
    p = poller(type="file", path=str(j), json_path="$.grid.intensity", unit="t_per_mwh")
    p.poll_once()
    assert p.fresh().g_per_kwh == pytest.approx(200.0)


def test_file_provider_keeps_the_last_value_over_a_half_written_file(tmp_path):
    f = tmp_path / "ci.txt"
    f.write_text("120")
    p = poller(type="file", path=str(f), unit="g_per_kwh")
    p.poll_once()
    f.write_text("")
    p.poll_once()
    s = p.status()
    assert not s.up and "empty" in s.last_error and s.value.g_per_kwh == 120.0
    f.unlink()
    p.poll_once()
    assert "No such file" in p.status().last_error
    assert p.fresh().g_per_kwh == 120.0


# --- failures: every one leaves the last good value and retries later ---------------------------


@pytest.mark.parametrize(("reply", "error", "limit"), [
    (Reply(500, {"error": "boom"}), "HTTP 500", 1.0),
    (Reply(503, b"<html>down</html>"), "HTTP 503", 1.0),
    (Reply(body=b'{"zone": "DE", "carbonInt'), "not valid JSON", 1.0),
    (Reply(body=b"<html>captive portal</html>"), "not valid JSON", 1.0),
    (Reply(body={"zone": "DE"}), "no 'carbonIntensity'", 1.0),
    (Reply(delay=3), "no answer within 0.4 s", 1.5),  # headers never come in time
    (Reply(hang=True), "no answer within 0.4 s", 1.5),
    (Reply(trickle=0.05, body={"zone": "DE", "carbonIntensity": 1, "pad": "x" * 50}),
     "took longer than 0.4 s", 1.5),  # a body trickled byte by byte
    (Reply(302, headers={"Location": "http://example.invalid/x?token=1"}), "redirects", 1.0),
])
def test_failures_are_reported_bounded_and_keep_the_last_value(apis, reply, error, limit):
    p = em(apis, refresh_seconds=300)
    p.fetcher.timeout = 0.4
    p.poll_once()
    apis.script(EM, reply)
    t0 = time.monotonic()
    wait = p.poll_once()
    took = time.monotonic() - t0
    s = p.status()
    assert not s.up and error in s.last_error, s.last_error
    assert took < limit
    assert s.value.g_per_kwh == 302.0 and p.fresh() is not None  # kept until stale
    assert 1.0 <= wait <= 2.0  # first retry: base 2 s, halved at most by jitter
    assert p.poll_once() == 300 and p.status().up  # recovered


def test_backoff_doubles_with_jitter_up_to_the_refresh(apis):
    p = em(apis, refresh_seconds=20)
    p.jitter = lambda: 1.0  # no spread: the ceiling of each step
    for _ in range(6):
        apis.script(EM, Reply(500))
    assert [p.poll_once() for _ in range(6)] == [2, 4, 8, 16, 20, 20]
    p.jitter = lambda: 0.0  # the floor is half
    apis.script(EM, Reply(500))
    assert p.poll_once() == 10


@pytest.mark.parametrize("header", ["7", "date"])
def test_429_retry_after_is_honoured(apis, header):
    if header == "date":
        header = email.utils.formatdate(time.time() + 7, usegmt=True)
    p = em(apis, refresh_seconds=1)
    apis.script(EM, Reply(429, {"message": "Too Many Requests"}, {"Retry-After": header}))
    wait = p.poll_once()
    assert 5.9 <= wait <= 7.01  # never sooner than asked, though backoff alone says 1 s
    assert "rate limited" in p.status().last_error


def test_the_thread_waits_retry_after_before_asking_again(apis):
    p = em(apis, refresh_seconds=0.05)
    apis.script(EM, Reply(429, headers={"Retry-After": "1"}))
    p.start()
    try:
        wait_for(lambda: len(apis.hits(EM)) >= 2, timeout=5, what="the retry")
        first, second = apis.hits(EM)[:2]
        assert second.at - first.at >= 1.0
        wait_for(lambda: p.status().up, timeout=5, what="recovery")
    finally:
        p.close(timeout=0)


# --- fallback and never waiting --------------------------------------------------------------


def test_fallback_before_the_first_value_after_staleness_and_in_order(tmp_path, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    cfgs = config.load(env={}, overrides={"carbon.providers": [
        {"type": "file", "name": "primary", "path": str(a), "unit": "g_per_kwh",
         "staleness_seconds": 30},
        {"type": "file", "name": "backup", "path": str(b), "unit": "g_per_kwh",
         "staleness_seconds": 30},
    ]}).carbon.providers
    pollers = providers.build(cfgs, "t")
    live = LiveSource(pollers, FALLBACK)
    assert live.current().provider == "bundled"  # nothing fetched yet
    b.write_text("90")
    for p in pollers:
        p.poll_once()
    assert (live.current().provider, live.current().g_per_kwh) == ("backup", 90.0)
    a.write_text("40")
    pollers[0].poll_once()
    assert live.current().provider == "primary"  # first in the list wins when fresh
    old = time.time() - 60
    for f in (a, b):
        os.utime(f, (old, old))
    for p in pollers:
        p.poll_once()
    i = live.current()
    assert (i.provider, i.g_per_kwh) == ("bundled", 56.0)
    assert "no provider has a value younger than its staleness_seconds" in caplog.text
    statuses = live.statuses()
    assert [s.name for s in statuses] == ["primary", "backup"]
    assert all(s.up and s.age_seconds > 59 for s in statuses)


def test_a_scrape_during_a_hung_provider_returns_at_once(apis):
    apis.script(EM, Reply(hang=True))
    p = em(apis)
    p.fetcher.timeout = 30
    live = LiveSource([p], FALLBACK)
    sampler = Sampler([], live, pue=1.0, interval=3600, providers=live.statuses)
    server = make_server("127.0.0.1", free_port(), Renderer(lambda: sampler.latest).render,
                         lambda: True)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    live.start()
    try:
        wait_for(lambda: apis.hits(EM), timeout=5, what="the provider's request")
        t0 = time.monotonic()
        sampler.sample()
        status, _, body = http_get(f"http://127.0.0.1:{server.server_address[1]}/metrics")
        took = time.monotonic() - t0
        assert status == 200 and took < 2, took  # the provider's request hangs for 30 s
        text = body.decode()
        assert ('carbonmeter_carbon_intensity_grams_per_kilowatt_hour{provider="bundled",'
                'region="FR"} 56.0') in text
        assert 'carbonmeter_carbon_intensity_provider_up{provider="electricitymaps"} 0.0' in text
    finally:
        live.close()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("providers", "error"), [
    ("[{type: maps}]", r"c.yaml: carbon.providers\[0\].type: 'maps' is not one of "
                       r"electricitymaps, watttime"),
    ("[{type: carbonintensity_uk, zon: '13'}]",
     r"carbon.providers\[0\]: unknown key 'zon'; did you mean 'zone'"),
    ("[{zone: DE}]", r"carbon.providers\[0\]: missing key 'type'"),
    ("[{type: electricitymaps, zone: DE}]",
     r"type electricitymaps needs a secret: set secret_env"),
    ("[{type: watttime, username: u, secret_env: X}]",
     r"carbon.providers\[0\].zone: required for type watttime"),
    ("[{type: file, path: /a, unit: g_per_kwh}, {type: file, path: /b, unit: g_per_kwh}]",
     r"carbon.providers\[1\].name: 'file' is used twice"),
    ("[{type: carbonintensity_uk, zone: 42}]",
     r"providers\[0\].zone: '42' must be a region id from 1 to 17"),
    ("[{type: carbonintensity_uk, timeout_seconds: 0}]",
     r"providers\[0\].timeout_seconds: 0 is out of range"),
    ("{type: file}", r"carbon.providers: must be a list"),
])
def test_provider_config_errors_name_the_key(tmp_path, providers, error):
    path = tmp_path / "c.yaml"
    path.write_text(f"carbon:\n  providers: {providers}\n")
    with pytest.raises(ConfigError, match=error):
        config.load(path, env={})


def test_no_provider_module_is_imported_without_providers():
    """urllib and ssl cost start-up time: serve loads them only for configured providers."""
    import subprocess
    import sys

    code = ("import sys; from carbonmeter import cli, sampler, config; "
            "from carbonmeter.carbon.resolve import resolve; "
            "cfg = config.load(env={}); resolve(cfg.carbon); "
            "print(sorted(m for m in sys.modules if m.startswith(('urllib.request', 'ssl', "
            "'carbonmeter.carbon.providers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], check=True)
    assert out.stdout.strip() == "[]"
