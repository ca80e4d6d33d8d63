"""deploy/systemd/carbonmeter.service, checked by systemd's own analyser (no systemd boot).

`systemd-analyze verify` loads the unit as PID 1 would and reports unknown or malformed
settings; it also insists that ExecStart's command exists, so the check runs on a copy whose
only change is the path of the installed command. `systemd-analyze security --offline` rates
the sandbox the unit asks for.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.deploy.shipped import DEPLOY
from tests.helpers import require

UNIT = DEPLOY / "systemd" / "carbonmeter.service"
INSTALLED = "/opt/carbonmeter/bin/carbonmeter"


def local_copy(tmp_path: Path) -> Path:
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} serve" in text
    copy = tmp_path / "carbonmeter.service"
    copy.write_text(text.replace(INSTALLED, str(Path(sys.executable).parent / "carbonmeter")))
    return copy


def test_unit_verifies_clean(tmp_path):
    out = subprocess.run([require("systemd-analyze"), "verify", str(local_copy(tmp_path))],
                         capture_output=True, text=True)
    assert out.returncode == 0 and not out.stdout and not out.stderr, out.stdout + out.stderr


def test_unit_is_sandboxed(tmp_path):
    out = subprocess.run([require("systemd-analyze"), "security", "--offline=true",
                          "--threshold=25", "--no-pager", str(local_copy(tmp_path))],
                         capture_output=True, text=True)
    exposure = re.search(r"Overall exposure level for carbonmeter.service: ([\d.]+)", out.stdout)
    assert out.returncode == 0 and exposure, out.stdout + out.stderr
    assert float(exposure.group(1)) <= 2.5
    text = UNIT.read_text()
    for setting in ("ProtectSystem=strict", "ProtectHome=yes", "NoNewPrivileges=yes",
                    "CapabilityBoundingSet=\n", "PrivateTmp=yes", "ReadOnlyPaths=",
                    "LimitNOFILE=65536"):
        assert setting in text, setting
