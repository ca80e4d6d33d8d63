"""Small shared pieces for tests: free ports, waiting, real servers started per test."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float = 20.0, every: float = 0.05,
             what: str = "condition") -> Any:
    """Poll until check() returns something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http_get(url: str, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def require(binary: str) -> str:
    """Path of a tool the test command installs; a clear failure when it is missing."""
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} is not installed: run the test command from README.md "
                             "(tests/run), which installs it")
    return path


@contextlib.contextmanager
def prometheus(tmp: Path, targets: list[str], *, scrape_interval: str = "1s",
               rule_files: list[Path] | None = None) -> Iterator[str]:
    """A real Prometheus server scraping `targets` (host:port); yields its base URL."""
    binary = require("prometheus")
    port = free_port()
    cfg = tmp / "prometheus.yml"
    rules = "".join(f"  - {p}\n" for p in rule_files or [])
    cfg.write_text(
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: 1s\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n  - job_name: carbonmeter\n    static_configs:\n"
        + f"      - targets: {json.dumps(targets)}\n")
    with open(tmp / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_get(f"{url}/-/ready")[0] == 200, what="Prometheus ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def prom_query(url: str, expr: str) -> list[dict[str, Any]]:
    """Instant query against Prometheus' HTTP API; the result vector."""
    from urllib.parse import quote

    status, _, body = http_get(f"{url}/api/v1/query?query={quote(expr)}")
    data = json.loads(body)
    if status != 200 or data.get("status") != "success":
        raise AssertionError(f"query {expr!r} failed: {body[:300]!r}")
    return data["data"]["result"]


def fake_executable(directory: Path, name: str, script: Path) -> Path:
    """Install the Python `script` as executable `name` in `directory` (put it first on PATH),
    run by this interpreter: a stand-in for a tool absent here (powermetrics, PowerLog, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + script.read_text())
    path.chmod(0o755)
    return path
