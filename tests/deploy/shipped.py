"""The monitoring files as shipped, read the way Prometheus and Grafana read them."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DEPLOY = ROOT / "deploy"
RULES = GRAFANA / "alerts" / "carbonmeter.rules.yml"
RULE_TESTS = sorted((GRAFANA / "alerts" / "tests").glob("*.yml"))
SCRAPE_CONFIG = GRAFANA / "prometheus.yml"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def rules() -> Iterator[dict[str, Any]]:
    for group in rule_groups():
        yield from group["rules"]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def venv_tool(name: str) -> str:
    """A tool from the test extra, installed beside this interpreter by tests/run."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise AssertionError(f"{name} is not installed: run the test command from README.md "
                             "(tests/run), which installs the test extra")
    return found
