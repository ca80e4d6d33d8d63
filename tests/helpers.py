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
               rule_files: list[Path] | None = None,
               config: dict[str, Any] | None = None) -> Iterator[str]:
    """A real Prometheus server scraping `targets` (host:port); yields its base URL.

    `config`, when given, is the whole configuration instead (targets and rules ignored).
    """
    binary = require("prometheus")
    port = free_port()
    cfg = tmp / "prometheus.yml"
    rules = "".join(f"  - {p}\n" for p in rule_files or [])
    cfg.write_text(json.dumps(config) if config is not None else (
        f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: 1s\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + "scrape_configs:\n  - job_name: carbonmeter\n    static_configs:\n"
        + f"      - targets: {json.dumps(targets)}\n"))
    url = f"http://127.0.0.1:{port}"
    with _running([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                   f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                  tmp / "prometheus.log",
                  lambda: http_get(f"{url}/-/ready")[0] == 200, "Prometheus ready"):
        yield url


@contextlib.contextmanager
def _running(args: list[str], log_path: Path, ready: Callable[[], Any],
             what: str) -> Iterator[subprocess.Popen]:
    """A server process, logging to `log_path`, stopped at the end; waits for `ready`."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)

    def check() -> Any:
        if proc.poll() is not None:
            raise AssertionError(f"{args[0]} exited: {log_path.read_text()[-2000:]}")
        return ready()

    try:
        wait_for(check, what=what)
        yield proc
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


def self_signed(tmp: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for `host` (an IP address), made by openssl: a server's
    certificate and its own CA at once. Returns (certificate, key), PEM files."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run([require("openssl"), "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    f"/CN={host}", "-addext", f"subjectAltName=IP:{host}", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def pushgateway(tmp: Path, *, port: int | None = None,
                web_config: str | None = None) -> Iterator[str]:
    """A real Prometheus Pushgateway; yields its base URL (https when web_config sets TLS).
    `web_config` is the text of an exporter-toolkit web configuration (basic auth, TLS)."""
    binary = require("prometheus-pushgateway")
    port = port or free_port()
    # Debian's build persists to /var/lib/prometheus by default: keep it in memory.
    args = [binary, f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=",
            "--log.level=warn"]
    scheme = "http"
    if web_config:
        (tmp / "web.yml").write_text(web_config)
        args.append(f"--web.config.file={tmp / 'web.yml'}")
        scheme = "https" if "tls_server_config" in web_config else "http"
    url = f"{scheme}://127.0.0.1:{port}"

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    with _running(args, tmp / "pushgateway.log", listening, "Pushgateway listening"):
        yield url


class Chromium:
    """A real headless Chromium, driven over the DevTools protocol on a pipe.

    `--remote-debugging-pipe` makes Chromium read commands on fd 3 and write replies and
    events on fd 4, each message a JSON object ended by NUL: no port, no websocket.
    """

    def __init__(self, tmp: Path) -> None:
        import os
        import queue
        import threading

        binary = require("chromium")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Above 9, so moving them to 3 and 4 can never overwrite one with the other.
        to_chrome_r, from_chrome_w = (_high(to_chrome_r), _high(from_chrome_w))
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-extensions", "--hide-scrollbars", "--window-size=1200,900",
                 f"--user-data-dir={tmp / 'chromium-profile'}", "--remote-debugging-pipe"]
        # bash (dash takes one-digit fds only) moves the pipe ends to fd 3 and 4, then
        # becomes Chromium.
        self._log = open(tmp / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}', binary, *flags],
            pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=self._log)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        import os

        buf = b""
        while True:
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                self._inbox.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self._inbox.put(json.loads(msg))

    def send(self, method: str, params: dict[str, Any] | None = None, *,
             session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """One command; its result. Events that arrive meanwhile go to `events`."""
        import os

        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._get(timeout, method)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        while True:
            e = self._get(timeout, method)
            if e.get("method") == method:
                return e

    def _get(self, timeout: float, what: str) -> dict[str, Any]:
        import queue

        try:
            msg = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"Chromium did not answer {what} within {timeout}s") from None
        if msg is None:
            raise AssertionError("Chromium exited; see chromium.log")
        if "method" in msg:
            self.events.append(msg)
        return msg

    def open(self, url: str) -> str:
        """A new tab showing `url`, loaded; its session id. Console, log, network and page
        events are recorded from before the navigation starts."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.send(f"{domain}.enable", session=session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired")
        return session

    def close(self) -> None:
        import contextlib
        import os

        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_chrome)
        self._log.close()


def _high(fd: int) -> int:
    import fcntl
    import os

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


@contextlib.contextmanager
def chromium(tmp: Path) -> Iterator[Chromium]:
    browser = Chromium(tmp)
    try:
        yield browser
    finally:
        browser.close()


def fake_executable(directory: Path, name: str, script: Path) -> Path:
    """Install the Python `script` as executable `name` in `directory` (put it first on PATH),
    run by this interpreter: a stand-in for a tool absent here (powermetrics, PowerLog, ...)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + script.read_text())
    path.chmod(0o755)
    return path
