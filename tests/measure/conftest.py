"""Shared fixtures of the measurement tests."""

from __future__ import annotations

import pytest

from tests.fixtures.powercap import FAST_FORWARD_UW, one_socket


@pytest.fixture
def rapl(tmp_path):
    """One package, read through RAPL; nothing estimated, no GPU: counters only."""
    tree = one_socket(tmp_path / "sys", max_power_uw=FAST_FORWARD_UW)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "probes: {disabled: [nvml, ram_model, platform_model]}\ncarbon: {region: FR}\n")
    return tree, cfg
