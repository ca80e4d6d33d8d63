"""The greenest grids suggested are real figures, not rounding.

Our World in Data publishes a country's intensity as its emissions in MtCO2eq, rounded to
0.01 Mt, divided by its generation in TWh; the bundled table keeps that figure and the
generation (`total_twh`). For a small grid the rounding is most of the figure: the Central
African Republic (0.15 TWh, all hydro) is published at 0 g/kWh, which only says its
emissions rounded to 0.00 Mt, while the per-source method (hydro 26 g/kWh) puts it at 26.
Such a figure must not lead the suggestions of `carbonmeter run` and `carbonmeter report`.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from carbonmeter import config
from carbonmeter.carbon import compare
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import find_region, mix_intensity, regions

COUNTRIES = [r for r in regions() if r.kind == "country"]


def test_every_published_country_figure_is_emissions_rounded_to_a_hundredth_of_a_mt():
    """The premise of the rule, checked on every row: intensity x generation is a whole
    number of 0.01 Mt, within the 0.001 g/kWh the table's own rounding of the figure
    allows (published to 3 decimals, kept to 1)."""
    for r in COUNTRIES:
        steps = r.g_per_kwh * r.total_twh / 10  # g/kWh x TWh = kt; / 10: hundredths of a Mt
        slack = 0.05 * r.total_twh / 10 + 0.01  # the table's 0.05 g/kWh rounding
        assert abs(steps - round(steps)) <= slack, (r.code, steps)


def test_the_central_african_republics_zero_is_rounding_and_is_not_suggested():
    cf = find_region("CF")
    assert (cf.g_per_kwh, cf.total_twh, cf.mix["hydro"]) == (0.0, 0.15, 1.0)
    half_step = compare.rounding_g_per_kwh(cf)
    assert half_step == pytest.approx(10 / 0.15 / 2)  # 33.3 g/kWh: anything from 0 to 33
    per_source = config.load(env={}).carbon.source_intensities
    hydro_only = mix_intensity({k: v for k, v in cf.mix.items() if v}, per_source)
    assert hydro_only == 26.0 and 0 <= hydro_only <= cf.g_per_kwh + half_step
    assert compare.too_coarse(cf)
    fr = find_region("FR")
    here = Intensity(fr.g_per_kwh, "FR", "bundled", fr.source, fr.year)
    suggested = [e.region.code for e in compare.greenest(1.0, fr.g_per_kwh, here, n=20)]
    assert "CF" not in suggested and "LS" not in suggested  # Lesotho: 20 +- 10 g/kWh
    assert suggested[:3] == ["BT", "PY", "AL"]  # 23.3, 23.8, 24.3
    roles = {e.role: e.region.code for e in compare.landmarks(1.0, fr.g_per_kwh, here)}
    assert roles["greenest"] == "BT"


def test_only_figures_known_to_ten_percent_are_ranked():
    ranked = compare.peers(None)
    left_out = sorted(r.code for r in COUNTRIES if r not in ranked)
    # each of these is at most 0.05 Mt of emissions: five steps of rounding or fewer
    assert left_out == ["CF", "CK", "FK", "KI", "LS", "MS", "NR", "PM", "SH", "SL", "VU"]
    for r in ranked:
        assert compare.rounding_g_per_kwh(r) <= 0.1 * r.g_per_kwh, r.code
    # large grids are never touched: France's half-step is 0.0097 g/kWh
    assert compare.rounding_g_per_kwh(find_region("FR")) == pytest.approx(5 / 514.11)


def test_a_coarse_grid_in_use_is_still_compared_with_the_ranked_ones():
    """Configured in Lesotho, a user still sees the ranked grids, and Lesotho itself."""
    ls = find_region("LS")
    here = Intensity(ls.g_per_kwh, "LS", "bundled", ls.source, ls.year)
    got = compare.landmarks(1.0, 20.0, here)
    assert [(e.role, e.region.code) for e in got][:2] == [("configured", "LS"),
                                                          ("greenest", "BT")]


def test_carbonmeter_run_suggests_no_rounded_figure(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {disabled: [nvml, ipmi]}\ncarbon: {region: FR}\n")
    out_file = tmp_path / "run.json"
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "run", "--config", str(cfg),
                          "--json", "--output", str(out_file), "--", "true"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out_file.read_text())
    assert [r["code"] for r in doc["greenest_regions"]] == ["BT", "PY", "AL"]
