"""Finding a region as people type it: any case, with or without accents, both ways.

The bundled names come from their sources, some with accents (Azure's "Zürich", "São Paulo
State"), most without (the Canada Energy Regulator's "Quebec"); a user types either.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from carbonmeter import config
from carbonmeter.carbon import resolve as resolving
from carbonmeter.carbon.regions import find_region, fold


def regions(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbonmeter", "regions", *args],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("typed", "codes"), [
    ("québec", ["CA-QC", "canadaeast", "northamerica-northeast1"]),  # sources: "Quebec"
    ("QUÉBEC province", ["CA-QC"]),
    ("zurich", ["switzerlandnorth", "europe-west6"]),  # Azure: "Zürich"; Google: "Zurich"
    ("zürich", ["switzerlandnorth", "europe-west6"]),
    ("sao paulo", ["sa-east-1", "brazilsouth", "southamerica-east1"]),
])
def test_search_folds_accents_on_both_sides(typed, codes):
    out = regions("--search", typed)
    assert out.returncode == 0, out.stderr
    assert [line.split()[1] for line in out.stdout.splitlines()[1:]] == codes


def test_the_count_is_singular_for_one_region():
    out = regions("--search", "québec", "--provider", "province")
    assert out.stderr.startswith("\n1 region. Use as carbon.region"), out.stderr
    out = regions("--search", "zurich")
    assert out.stderr.startswith("\n2 regions. "), out.stderr


@pytest.mark.parametrize("typed", ["Québec", "QUEBEC", " québec "])
def test_carbon_region_takes_a_name_with_or_without_accents(typed):
    assert find_region(typed).code == "CA-QC"
    cfg = config.load(env={}, overrides={"carbon.region": typed})
    assert resolving.resolve(cfg.carbon).current().region == "CA-QC"


def test_fold():
    assert fold("Zürich") == fold("ZURICH") == "zurich"
    assert fold("São Paulo") == "sao paulo"
    assert fold("Straße") == "strasse"  # casefold, not lower
