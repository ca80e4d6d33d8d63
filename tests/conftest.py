"""Settings every test shares."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_state_file(tmp_path, monkeypatch):
    """`carbonmeter serve` keeps its totals in /var/lib/carbonmeter/state.json by default,
    and tests run as root: each test (and every exporter it starts, which inherits the
    environment) gets its own state file instead, so no test restores another's totals."""
    monkeypatch.setenv("CARBONMETER_STATE_PATH", str(tmp_path / "carbonmeter-state.json"))
