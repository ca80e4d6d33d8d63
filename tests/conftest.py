"""Settings every test shares."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_state_file(tmp_path, monkeypatch):
    """`carbonmeter serve` keeps its totals in /var/lib/carbonmeter/state.json by default,
    and tests run as root: each test (and every exporter it starts, which inherits the
    environment) gets its own state file instead, so no test restores another's totals."""
    monkeypatch.setenv("CARBONMETER_STATE_PATH", str(tmp_path / "carbonmeter-state.json"))


# Fixture trees of a thousand processes are thousands of small files: build them in memory
# (/dev/shm) where the machine has it, which is 15 times faster than a disk-backed /tmp.
@pytest.fixture
def ram_path(tmp_path):
    base = Path("/dev/shm")
    if not base.is_dir():
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="carbonmeter-test-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
