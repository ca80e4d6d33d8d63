"""The shipped scrape configuration, rules and dashboards against a real Prometheus.

`carbonmeter serve` runs on a fixture powercap tree (two sockets with DRAM, the kernel's
counter semantics and 0400 energy_uj, see tests/fixtures/powercap.py). Prometheus runs on
grafana/prometheus.yml as shipped, with three changes a test needs: targets on this machine's
free ports, 1 s scrape and evaluation intervals, and a copy of the rules in which every `for:` is
0s, the parameter group evaluates every second, and the emissions budgets are 1 g (a fixture
cannot emit kilograms in seconds). Everything else, the power threshold included, is as shipped.

Beside it, a stand-in exporter plays the rest of a fleet: a fixed exposition of the series a
node with workload attribution and a live intensity provider exports (carbonmeter_workload_*
with the labels carbonmeter gives them — `kind` the device kind, `workload` and the level's
labels —, carbonmeter_unmeasured_seconds_total, carbonmeter_carbon_intensity_provider_up and
_age_seconds), so the per-workload dashboard and the provider alert are proven against data of
that shape without a Kubernetes node or a grid API on the test machine.
A third target is a closed port: an exporter that is down.

The scripted scenario: the sensors first count nothing (CarbonmeterNoEnergy fires, the power
alert is silent), then the host draws kilowatts (CarbonmeterHostPowerHigh fires, NoEnergy
resolves), then the RAPL driver goes away (CarbonmeterProbeDown fires). By the end every alert
of the rules file has fired, every recording rule has recorded data, every rule evaluated
without error, and every PromQL expression of every dashboard panel and variable returned data.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from tests.deploy.shipped import (
    DASHBOARDS,
    RULES,
    SCRAPE_CONFIG,
    alerts,
    dashboard,
    panels,
    rules,
)
from tests.fixtures.powercap import FAST_FORWARD_UW, two_sockets_with_dram
from tests.helpers import free_port, http_get, prom_query, prometheus, wait_for
from tests.test_end_to_end import start_serve, stop

# Grafana's built-in variables, as it would expand them for a 10-minute dashboard scraped every
# second (so $__rate_interval is well above four scrape intervals).
BUILTINS = {"__rate_interval": "30s", "__interval": "5s", "__range": "10m"}

# What the stand-in exports: (labels, watts) per workload.
CONTAINER = {"kind": "cpu", "workload": "container"}
PROCESS = {"kind": "cpu", "workload": "process"}
WORKLOADS = [
    ({**CONTAINER, "namespace": "shop", "pod": "web-6f7c9", "container": "nginx"}, 12.0),
    ({**CONTAINER, "namespace": "shop", "pod": "web-6f7c9", "container": "app"}, 30.0),
    ({**CONTAINER, "namespace": "batch", "pod": "train-0", "container": "trainer"}, 180.0),
    ({"kind": "cpu", "workload": "unattributed", "namespace": "", "pod": "", "container": ""},
     40.0),
    ({**PROCESS, "pid": "1234", "comm": "sshd"}, 0.5),
    ({**PROCESS, "pid": "4321", "comm": "python3"}, 25.0),
]
STAND_IN_HOST_WATTS = 300.0
STAND_IN_G_PER_KWH = 620.0  # above the shipped 500 threshold
STAND_IN_AGE_S = 7300.0  # older than the shipped 2-hour limit


def _labels(d: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in d.items()) + "}"


def stand_in_exposition(elapsed: float) -> str:
    """The fleet's series, counters growing at the stated power since the stand-in started."""
    lines = ["# TYPE carbonmeter_workload_energy_joules counter",
             "# TYPE carbonmeter_workload_emissions_grams counter",
             "# TYPE carbonmeter_workload_power_watts gauge"]
    for labels, watts in WORKLOADS:
        joules = watts * elapsed
        lines += [f"carbonmeter_workload_energy_joules_total{_labels(labels)} {joules}",
                  f"carbonmeter_workload_emissions_grams_total{_labels(labels)} "
                  f"{joules / 3.6e6 * STAND_IN_G_PER_KWH}",
                  f"carbonmeter_workload_power_watts{_labels(labels)} {watts}"]
    provider = {"provider": "electricitymaps"}
    lines += [
        "# TYPE carbonmeter_unmeasured_seconds counter",
        f"carbonmeter_unmeasured_seconds_total {0.02 * elapsed}",
        "# TYPE carbonmeter_host_energy_joules counter",
        f"carbonmeter_host_energy_joules_total {STAND_IN_HOST_WATTS * elapsed}",
        "# TYPE carbonmeter_carbon_intensity_provider_up gauge",
        f"carbonmeter_carbon_intensity_provider_up{_labels(provider)} 1",
        "# TYPE carbonmeter_carbon_intensity_age_seconds gauge",
        f"carbonmeter_carbon_intensity_age_seconds{_labels(provider)} {STAND_IN_AGE_S}",
        "# TYPE carbonmeter_carbon_intensity_grams_per_kilowatt_hour gauge",
        "carbonmeter_carbon_intensity_grams_per_kilowatt_hour"
        f'{_labels({**provider, "region": "DE"})} {STAND_IN_G_PER_KWH}',
    ]
    return "\n".join(lines) + "\n"


class StandIn:
    """A tiny HTTP server serving stand_in_exposition() at /metrics."""

    def __init__(self) -> None:
        started = time.monotonic()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = stand_in_exposition(time.monotonic() - started).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def rules_for_test(tmp_path: Path) -> Path:
    """The shipped rules with the changes the docstring lists; nothing else differs."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        group.pop("interval", None)
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
            elif rule["record"] == "carbonmeter:emissions_budget_grams":
                rule["expr"] = "vector(1)"
    path = tmp_path / "carbonmeter.rules.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def scrape_config(rules_file: Path, targets: dict[str, str]) -> dict[str, Any]:
    """grafana/prometheus.yml with local targets, named by instance, and fast intervals."""
    cfg = yaml.safe_load(SCRAPE_CONFIG.read_text())
    cfg["global"].update(scrape_interval="1s", evaluation_interval="1s")
    cfg["rule_files"] = [str(rules_file)]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "carbonmeter"]
    shipped = job["static_configs"][0]
    job = copy.deepcopy(job)
    job["static_configs"] = [{**shipped, "targets": [t], "labels": {"instance": name}}
                             for name, t in targets.items()]
    cfg["scrape_configs"] = [job]
    return cfg


def active_alerts(prom: str) -> list[dict[str, Any]]:
    return [a for a in _api(prom, "/api/v1/alerts")["alerts"] if a["state"] == "firing"]


def _api(prom: str, path: str) -> Any:
    status, _, body = http_get(prom + path)
    assert status == 200, body[:300]
    return json.loads(body)["data"]


class AlertLog:
    """Which alerts have fired so far, for whom."""

    def __init__(self, prom: str) -> None:
        self.prom = prom
        self.seen: set[str] = set()

    def firing(self, name: str, **labels: str) -> bool:
        now = active_alerts(self.prom)
        self.seen |= {a["labels"]["alertname"] for a in now}
        return any(a["labels"]["alertname"] == name
                   and all(a["labels"].get(k) == v for k, v in labels.items()) for a in now)


# -- Grafana's side: variables and expressions -------------------------------------------------

LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def expand(expr: str, values: dict[str, str]) -> str:
    """Grafana's interpolation of $name and ${name} in a query."""
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"undefined variable ${name} in {expr!r}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, expr)


def variable_choices(prom: str, dash: dict[str, Any]) -> Iterator[dict[str, str]]:
    """Every combination of values a user can pick; a multi-value variable is picked "All"."""
    variables = [v for v in dash["templating"]["list"] if v["type"] == "query"]

    def walk(i: int, picked: dict[str, str]) -> Iterator[dict[str, str]]:
        if i == len(variables):
            yield picked
            return
        v = variables[i]
        query = v["query"] if isinstance(v["query"], str) else v["query"]["query"]
        m = LABEL_VALUES.match(expand(query, {**BUILTINS, **picked}))
        assert m, f"{dash['uid']}: variable {v['name']}: not a label_values() query: {query}"
        params = f"?match[]={quote(m['selector'])}" if m["selector"] else ""
        found = _api(prom, f"/api/v1/label/{m['label']}/values{params}")
        assert found, f"{dash['uid']}: variable {v['name']} has no values: {query}"
        if v.get("multi") or v.get("includeAll"):
            options = [v.get("allValue") or "(" + "|".join(map(re.escape, found)) + ")"]
        else:
            options = found
        for value in options:
            yield from walk(i + 1, {**picked, v["name"]: value})

    yield from walk(0, {})


def check_dashboards(prom: str) -> None:
    for path in DASHBOARDS:
        dash = dashboard(path)
        choices = list(variable_choices(prom, dash))
        for panel in panels(dash):
            for target in panel.get("targets", []):
                results = [prom_query(prom, expand(target["expr"], {**BUILTINS, **c}))
                           for c in choices]  # also proves that each one parses
                assert any(results), (f"{path.name}: panel {panel['title']!r} returns no data "
                                      f"for any choice of variables: {target['expr']}")


# -- the scenario --------------------------------------------------------------------------------


def test_shipped_rules_and_dashboards_on_a_live_exporter(tmp_path):
    tree = two_sockets_with_dram(tmp_path / "sys", max_power_uw=FAST_FORWARD_UW)
    proc, target = start_serve(tmp_path, f"paths: {{sysfs: {tmp_path / 'sys'}}}\n",
                               interval=0.25)
    stand_in = StandIn()
    try:
        wait_for(lambda: b'device="dram-1"' in http_get(f"http://{target}/metrics")[2],
                 what="the exporter's first sample")
        cfg = scrape_config(rules_for_test(tmp_path), {
            "node-fixture": target, "node-attribution": stand_in.target,
            "node-down": f"127.0.0.1:{free_port()}"})
        with prometheus(tmp_path, [], config=cfg) as prom:
            log = AlertLog(prom)

            # 1. The sensors count nothing: an exporter that is up but measures no energy.
            wait_for(lambda: log.firing("CarbonmeterNoEnergy", instance="node-fixture"),
                     what="CarbonmeterNoEnergy while the counters stand still")
            assert not log.firing("CarbonmeterHostPowerHigh")

            # 2. The host draws kilowatts: 2.4 MJ in about 4 s puts the 5-minute mean power over
            # the shipped 1000 W threshold. Steps stay under one RAPL wrap per sample.
            for _ in range(12):
                tree.advance("intel-rapl:0", 100_000)
                tree.advance("intel-rapl:1", 100_000)
                tree.advance("intel-rapl:0:0", 500)
                time.sleep(0.3)
            wait_for(lambda: log.firing("CarbonmeterHostPowerHigh", instance="node-fixture"),
                     what="CarbonmeterHostPowerHigh after the spike")
            wait_for(lambda: not log.firing("CarbonmeterNoEnergy", instance="node-fixture"),
                     what="CarbonmeterNoEnergy resolving once energy counts")
            assert not log.firing("CarbonmeterHostPowerHigh", instance="node-attribution")

            check_dashboards(prom)
            for rule in rules():
                if "record" in rule:
                    assert prom_query(prom, rule["record"]), f"{rule['record']} recorded nothing"

            # 3. The RAPL driver goes away: the probe reads nothing.
            tree.remove_zone("intel-rapl:0")
            tree.remove_zone("intel-rapl:1")
            wait_for(lambda: log.firing("CarbonmeterProbeDown", instance="node-fixture",
                                        probe="rapl"), what="CarbonmeterProbeDown")

            names = {a["alert"] for a in alerts()}
            try:
                wait_for(lambda: log.firing("CarbonmeterDown", instance="node-down")
                         and names <= log.seen, what="every alert firing once")
            except AssertionError:
                raise AssertionError(f"never fired: {sorted(names - log.seen)}") from None
            groups = _api(prom, "/api/v1/rules")["groups"]
            loaded = [r for g in groups for r in g["rules"]]
            assert len(loaded) == len(list(rules()))
            bad = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
            assert not bad, bad
    finally:
        stand_in.close()
        assert stop(proc) == 0, (tmp_path / "serve.log").read_text()

