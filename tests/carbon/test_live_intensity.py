"""`carbonmeter serve` with an intensity that changes while it runs, as users run it.

The exporter is a subprocess on a fixture powercap tree (the kernel's counter semantics) and
a file provider that the test rewrites, like the job that would feed it; each step changes
the intensity, waits until the exporter uses it, then spends energy. The exported emissions
must be Σ ΔE × PUE × C(t) over the steps, and a change of intensity must leave past
emissions alone. A second test runs the HTTP providers against local stand-ins of the real
services (tests/fakes/grid_apis.py) with debug logging and looks for secrets in every output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonmeter.carbon.regions import find_region
from tests.fakes.grid_apis import EM_TOKEN, WT_PASSWORD, WT_USER, GridApis, Reply
from tests.fixtures.powercap import FAST_FORWARD_UW, one_socket
from tests.helpers import http_get, require, wait_for
from tests.test_end_to_end import metrics, start_serve, stop

PKG = 'carbonmeter_{}{{device="package-0",kind="cpu",source="rapl"}}'


def sample_value(text: str, series: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_emissions_are_the_sum_of_each_intervals_energy_times_its_intensity(tmp_path):
    tree = one_socket(tmp_path / "sys", max_power_uw=FAST_FORWARD_UW)
    ci = tmp_path / "intensity.txt"
    write_atomically(ci, "100")
    proc, target = start_serve(tmp_path, f"""
paths: {{sysfs: {tmp_path / 'sys'}}}
probes: {{disabled: [nvml, cpu_model, ram_model, platform_model]}}
carbon:
  region: FR
  pue: 1.5
  providers:
    - {{type: file, name: site, zone: site-1, path: {ci}, unit: g_per_kwh,
       refresh_seconds: 0.05, staleness_seconds: 30}}
embodied:
  devices: {{host: {{kg_co2eq: 1200, lifetime_years: 4}}}}
""", interval=0.1)
    gauge = 'carbonmeter_carbon_intensity_grams_per_kilowatt_hour{{provider="{}",region="{}"}}'

    def uses(provider: str, region: str, g: float) -> bool:
        return sample_value(metrics(target), gauge.format(provider, region)) == g

    try:
        wait_for(lambda: uses("site", "site-1", 100.0), what="the file's intensity in use")
        text = metrics(target)
        energy = sample_value(text, PKG.format("energy_joules_total"))
        grams = sample_value(text, PKG.format("emissions_grams_total"))
        assert (energy, grams) == (0.0, 0.0)
        expected = 0.0
        steps = [(100.0, 5_000), (400.0, 20_000), (100.0, 3_000), (730.5, 12_345.5)]
        for intensity, joules in steps:
            write_atomically(ci, f"{intensity}\n")
            wait_for(lambda i=intensity: uses("site", "site-1", i), what=f"intensity {intensity}")
            text = metrics(target)
            # A new intensity prices only what comes after it: nothing before changes.
            assert sample_value(text, PKG.format("emissions_grams_total")) == grams
            before = sample_value(text, PKG.format("energy_joules_total"))
            tree.advance("intel-rapl:0", joules)
            wait_for(lambda b=before, j=joules: sample_value(
                metrics(target), PKG.format("energy_joules_total")) > b + j - 0.001,
                what="the step's energy")
            text = metrics(target)
            energy = sample_value(text, PKG.format("energy_joules_total"))
            grams = sample_value(text, PKG.format("emissions_grams_total"))
            delta = energy - before
            assert delta == pytest.approx(joules, abs=1e-4)  # the kernel floors to a tick
            expected += delta / 3.6e6 * 1.5 * intensity
            assert grams == pytest.approx(expected, rel=1e-12)
        # (5 kJ x 100 + 20 kJ x 400 + 3 kJ x 100 + 12.3455 kJ x 730.5) g/kWh = 17,818,387.75
        # J·g/kWh; / 3.6e6 J/kWh x PUE 1.5 = 7.424328 g
        assert expected == pytest.approx(17_818_387.75 / 3.6e6 * 1.5, rel=1e-8)

        # The job stops writing: after staleness_seconds the bundled region takes over.
        old = time.time() - 60
        os.utime(ci, (old, old))
        fr = find_region("FR").g_per_kwh
        wait_for(lambda: uses("bundled", "FR", fr), what="the fallback to the region")
        text = metrics(target)
        # the time the value is for: the file's, however long ago it was fetched
        assert sample_value(text, 'carbonmeter_carbon_intensity_provider_timestamp_seconds'
                            '{provider="site"}') == pytest.approx(old, abs=1.0)
        assert sample_value(text, 'carbonmeter_carbon_intensity_provider_up{provider="site"}') == 1
        before = sample_value(text, PKG.format("energy_joules_total"))
        tree.advance("intel-rapl:0", 7_200)
        wait_for(lambda: sample_value(metrics(target), PKG.format("energy_joules_total"))
                 > before + 7_199.999, what="energy at the fallback intensity")
        text = metrics(target)
        delta = sample_value(text, PKG.format("energy_joules_total")) - before
        expected += delta / 3.6e6 * 1.5 * fr
        assert sample_value(text, PKG.format("emissions_grams_total")) == pytest.approx(
            expected, rel=1e-12)
        assert sample_value(text, "carbonmeter_host_emissions_grams_total") == pytest.approx(
            expected, rel=1e-12)
        assert sample_value(
            text, 'carbonmeter_embodied_emissions_grams_total{device="host"}') > 0
        out = subprocess.run([require("promtool"), "check", "metrics"],
                             input=http_get(f"http://{target}/metrics")[2], capture_output=True)
        assert out.returncode == 0 and not out.stdout and not out.stderr, out
    finally:
        code = stop(proc)
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log
    assert "carbon intensity from provider site" in log
    assert "no provider has a value younger than its staleness_seconds" in log


def test_secrets_never_reach_the_log_the_metrics_or_config_check(tmp_path):
    token_file = tmp_path / "wt-password"
    token_file.write_text(WT_PASSWORD + "\n")
    with GridApis() as apis:
        apis.custom["/grid"] = {"value": 0.31}
        em = "/v3/carbon-intensity/latest"
        apis.script(em, Reply(401), Reply(500), Reply(body=b"{broken"),
                    Reply(429, headers={"Retry-After": "0"}))
        apis.script("/grid", Reply(403))
        config = f"""
log: {{level: debug}}
probes: {{disabled: [nvml]}}
carbon:
  providers:
    - {{type: electricitymaps, zone: DE, url: "{apis.url}", secret_env: CM_TEST_EM_TOKEN,
       refresh_seconds: 0.2}}
    - {{type: watttime, zone: CAISO_NORTH, username: {WT_USER}, url: "{apis.url}",
       secret_file: {token_file}, refresh_seconds: 0.2}}
    - {{type: http, url: "{apis.url}/grid", json_path: value, unit: kg_per_kwh,
       headers: {{Authorization: "Bearer ${{secret}}"}}, secret_env: CM_TEST_EM_TOKEN,
       refresh_seconds: 0.2}}
"""
        env = {"CM_TEST_EM_TOKEN": EM_TOKEN}
        proc, target = start_serve(tmp_path, config, env=env, interval=0.1)
        try:
            up = 'carbonmeter_carbon_intensity_provider_up{{provider="{}"}} 1.0'
            wait_for(lambda: all(up.format(p) in metrics(target)
                                 for p in ("electricitymaps", "watttime", "http")),
                     what="all three providers up after their failures")
            text = metrics(target)
            assert sample_value(text, 'carbonmeter_carbon_intensity_provider_errors_total'
                                      '{provider="electricitymaps"}') == 4
            # The first provider in the list with a fresh value is the one in use.
            assert '{provider="electricitymaps",region="DE"} 302.0' in text
        finally:
            assert stop(proc) == 0
        check = subprocess.run([sys.executable, "-m", "carbonmeter", "config", "check",
                                str(tmp_path / "carbonmeter.yaml")],
                               capture_output=True, text=True, env={**os.environ, **env})
        assert check.returncode == 0, check.stderr
        assert "secret_env: CM_TEST_EM_TOKEN" in check.stdout
    assert apis.hits("/grid")[-1].headers["authorization"] == f"Bearer {EM_TOKEN}"
    log = (tmp_path / "serve.log").read_text()
    assert "HTTP 401" in log and "HTTP 403" in log and "not valid JSON" in log
    for output in (log, text, check.stdout, check.stderr):
        for secret in (EM_TOKEN, WT_PASSWORD, "wt-bearer-"):
            assert secret not in output
    assert not re.search(r"Tok3n|Passw0rd", log)
