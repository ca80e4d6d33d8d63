"""What measuring code loads: only what the path uses (README, Performance). Each module
named here costs milliseconds to import and would be paid by every `carbonmeter run` and by
the first `track()` in every program."""

from __future__ import annotations

import subprocess
import sys

NOT_ON_THE_PATH = ("yaml", "psutil", "opentelemetry", "bcrypt", "matplotlib",
                   "carbonmeter.measure.codecarbon", "carbonmeter.attribution.kubernetes",
                   "prometheus_client", "urllib.request", "statistics")


def _loaded(argv: list[str]) -> set[str]:
    """Modules imported by a fresh interpreter, from python -X importtime's report."""
    out = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, timeout=120, check=True)
    return {line.rsplit("|", 1)[1].strip() for line in out.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_track_loads_nothing_it_does_not_use() -> None:
    loaded = _loaded(["-c", "from carbonmeter import track\nwith track():\n    pass"])
    assert "carbonmeter.measure.meter" in loaded  # the report is read: this did measure
    assert [m for m in NOT_ON_THE_PATH if m in loaded] == []


def test_run_loads_nothing_it_does_not_use() -> None:
    loaded = _loaded(["-m", "carbonmeter", "run", "--", "true"])
    assert "carbonmeter.measure.run" in loaded
    assert [m for m in NOT_ON_THE_PATH if m in loaded] == []
