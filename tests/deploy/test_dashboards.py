"""Grafana dashboards and provisioning, checked as Grafana's file provisioning reads them.

Grafana itself is not packaged for Debian, so the dashboards' JSON is checked here for what
file provisioning needs (no import-time ${DS_...} placeholders: the datasource is a variable),
and every panel's PromQL runs against a real Prometheus in test_monitoring_end_to_end.py.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.deploy.shipped import DASHBOARDS, DEPLOY, GRAFANA, dashboard, panels

DS_REF = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dash(request):
    return dashboard(request.param)


def test_three_dashboards_with_distinct_uids():
    uids = [dashboard(p)["uid"] for p in DASHBOARDS]
    assert sorted(uids) == ["carbonmeter-node", "carbonmeter-overview", "carbonmeter-workload"]


def test_datasource_is_a_variable_not_an_import_placeholder(dash):
    text = json.dumps(dash)
    assert "${DS_" not in text and "__inputs" not in dash and "__requires" not in dash
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds["name"] == "datasource" and ds["query"] == "prometheus"
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"] == DS_REF, v["name"]
    for p in panels(dash):
        assert p["datasource"] == DS_REF, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DS_REF, p["title"]


def test_panels_have_unique_ids_a_place_and_queries(dash):
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), ids
    for p in panels(dash):
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"][
            "w"] <= 24, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        assert all(t["expr"].strip() for t in p["targets"]), p["title"]


def test_overview_shows_what_an_operator_looks_for():
    dash = dashboard(GRAFANA / "dashboards" / "overview.json")
    titles = {p["title"] for p in panels(dash)}
    assert {"Host power", "Power by device kind", "Energy by device kind", "Emission rate",
            "Cumulative emissions", "Carbon intensity", "Top hosts by power"} <= titles
    exprs = " ".join(t["expr"] for p in panels(dash) for t in p["targets"])
    assert "topk(10, sum by (instance)" in exprs


def test_workload_dashboard_reads_the_attribution_metrics():
    dash = dashboard(GRAFANA / "dashboards" / "workload.json")
    exprs = " ".join(t["expr"] for p in panels(dash) for t in p["targets"])
    for metric in ("carbonmeter_workload_energy_joules_total",
                   "carbonmeter_workload_emissions_grams_total",
                   "carbonmeter_workload_power_watts", "carbonmeter_unmeasured_seconds_total"):
        assert metric in exprs
    assert {v["name"] for v in dash["templating"]["list"]} >= {"instance", "namespace"}


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "carbonmeter.yml")
                          .read_text())
    (provider,) = prov["providers"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in compose["services"]["grafana"]
                  ["volumes"] if v.startswith("../"))
    assert mounts["../grafana/dashboards"] == provider["options"]["path"]
    assert mounts["../grafana/provisioning"] == "/etc/grafana/provisioning"
