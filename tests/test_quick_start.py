"""README's Quick start, run as written: as root it never calls sudo (which a container or a
fresh cloud machine may not have); as another user it goes through sudo.

The commands it runs are stand-ins on PATH that record their arguments: a `python3` that lacks
`venv` (as Debian's python3 does until python3-venv is installed) and makes a virtual
environment of stand-ins, an `apt-get`, and a `sudo` that runs what it is given. The shell,
`id` and the README's text are the real ones.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAND_IN = """#!/bin/sh
echo "{name} $*" >> "$QUICK_LOG"
{body}
"""
PYTHON3 = """case "$1" in
  -c) exit 1 ;;  # no ensurepip/venv module yet
  -m) mkdir -p "$3/bin"
      for t in pip carbonmeter; do
        printf '#!/bin/sh\\necho "%s $*" >> "$QUICK_LOG"\\n' "$t" > "$3/bin/$t"
        chmod +x "$3/bin/$t"
      done ;;
esac"""


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README's Quick start has no sh block"
    return block[1]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder another user can enter (pytest's own tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="carbonmeter-quick-start-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def run_as(tmp_path: Path, user: list[str]) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("python3", PYTHON3), ("apt-get", ""), ("sudo", 'exec "$@"')):
        path = bin_dir / name
        path.write_text(STAND_IN.format(name=name, body=body))
        path.chmod(0o755)
    work = tmp_path / "checkout"
    work.mkdir()
    log = tmp_path / "log"
    log.touch()
    for p in (work, log):
        p.chmod(0o777)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "QUICK_LOG": str(log), "HOME": str(tmp_path)}
    out = subprocess.run([*user, "/bin/bash", "-euo", "pipefail", "-c", quick_start()],
                         cwd=work, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return log.read_text().splitlines()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as the tests run")
def test_as_root_without_sudo(open_dir):
    calls = run_as(open_dir, [])
    assert calls == ["python3 -c import ensurepip, venv", "apt-get update",
                     "apt-get install -y python3-venv", "python3 -m venv .venv",
                     "pip install .", "carbonmeter serve"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_as_another_user_through_sudo(open_dir):
    calls = run_as(open_dir, ["setpriv", "--reuid=nobody", "--regid=nogroup",
                              "--clear-groups"])
    assert calls[:5] == ["python3 -c import ensurepip, venv", "sudo apt-get update",
                         "apt-get update", "sudo apt-get install -y python3-venv",
                         "apt-get install -y python3-venv"]
    assert calls[5:] == ["python3 -m venv .venv", "pip install .", "carbonmeter serve"]
