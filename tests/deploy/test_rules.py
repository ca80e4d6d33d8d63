"""The alerting and recording rules: valid for promtool, unit-tested, documented.

promtool is Prometheus' own checker (Debian's `prometheus` package): `check rules` parses every
expression the way the server does, `test rules` runs grafana/alerts/tests on a simulated
clock, where each alert is made to fire and to stay silent.
"""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.deploy.shipped import ROOT, RULE_TESTS, RULES, SCRAPE_CONFIG, alerts, rule_groups
from tests.helpers import require

SEVERITIES = {"critical", "warning", "info"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require("promtool"), *args], capture_output=True, text=True,
                          cwd=ROOT)


def test_promtool_check_rules():
    out = promtool("check", "rules", str(RULES))
    assert out.returncode == 0, out.stdout + out.stderr
    n = sum(len(g["rules"]) for g in rule_groups())
    assert f"SUCCESS: {n} rules found" in out.stdout


def test_promtool_unit_tests_pass():
    assert RULE_TESTS
    out = promtool("test", "rules", *map(str, RULE_TESTS))
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_unit_tested_firing_and_silent():
    cases = [c for p in RULE_TESTS for t in yaml.safe_load(p.read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    for a in alerts():
        expected = [c["exp_alerts"] for c in cases if c["alertname"] == a["alert"]]
        assert any(expected), f"{a['alert']}: no case where it fires"
        assert [] in expected, f"{a['alert']}: no case where it stays silent"


def test_scrape_configuration_loads_the_rules():
    out = promtool("check", "config", str(SCRAPE_CONFIG))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout


def test_every_alert_has_severity_summary_description_and_a_runbook_section():
    readme = (ROOT / "README.md").read_text()
    # GitHub's anchors: the heading lowercased, spaces to dashes, punctuation dropped
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", readme, re.M)}
    names = [a["alert"] for a in alerts()]
    assert len(names) == len(set(names))
    for a in alerts():
        assert a["labels"]["severity"] in SEVERITIES, a["alert"]
        ann = a["annotations"]
        assert ann["summary"] and ann["description"], a["alert"]
        assert ann["runbook_url"] == f"README.md#{a['alert'].lower()}", a["alert"]
        assert a["alert"].lower() in anchors, f"README.md has no section {a['alert']}"
