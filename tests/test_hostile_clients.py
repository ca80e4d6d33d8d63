"""Clients that try to starve the scrapes: bcrypt floods, silent TLS connections, churn.

`carbonmeter serve` runs as users run it, a subprocess sampling a powercap fixture every
0.1 s; the attacker is another process on 127.0.0.1 (so it shares no interpreter lock with
the measuring client); an authorized scraper in this process measures every scrape's
latency during the attack, and its p99 must stay under 100 ms. Every loop is bounded in
count and time.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from carbonmeter import state
from tests.fixtures.certs import make_pki
from tests.fixtures.powercap import one_socket
from tests.helpers import free_port, wait_for

P99_S = 0.100
PASSWORD = "scrape-me"

ATTACKER = r"""
import resource, socket, sys, threading, time, base64
mode, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
addr = ("127.0.0.1", port)
end = time.monotonic() + seconds
done = {"sent": 0, "answers": {}}
lock = threading.Lock()

def request(i, wait):
    token = base64.b64encode(f"prometheus:guess-{i}".encode()).decode()
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n"
                  .encode())
        status = s.recv(12)[9:12].decode() if wait else "gone"
    with lock:
        done["sent"] += 1
        done["answers"][status] = done["answers"].get(status, 0) + 1

def guesses(first, n, wait):
    for i in range(first, first + n):
        if time.monotonic() > end:
            return
        try:
            request(i, wait)
        except OSError:
            pass

if mode == "guesses":  # distinct wrong passwords; all but 50 hang up without an answer
    share = (count - 50) // 25
    threads = [threading.Thread(target=guesses, args=(k * share, share, False))
               for k in range(25)]
    threads += [threading.Thread(target=guesses, args=(25 * share + 10 * k, 10, True))
                for k in range(5)]
    for t in threads: t.start()
    for t in threads: t.join()
elif mode == "silent":  # connections that never say a word
    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection(addr, timeout=5))
        except OSError:
            break
    done["sent"] = len(held)
    print(f"holding {len(held)}", flush=True)
    time.sleep(max(0.0, end - time.monotonic()))
elif mode == "churn":  # connect and close, `count` a second
    n = 0
    start = time.monotonic()
    while time.monotonic() < end and n < count * seconds:
        try:
            socket.create_connection(addr, timeout=5).close()
        except OSError:
            pass
        n += 1
        time.sleep(max(0.0, start + n / count - time.monotonic()))
    done["sent"] = n
print(done, flush=True)
"""


def auth(user: str = "prometheus", password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Exporter:
    """`carbonmeter serve` on a fixture package, with basic auth (bcrypt cost 10, as
    `htpasswd -B` writes) and optionally TLS, under an open-files limit of `nofile`."""

    def __init__(self, tmp: Path, *, tls: bool = False, nofile: int | None = None) -> None:
        one_socket(tmp / "sys")
        self.tmp = tmp
        self.port = free_port()
        self.state = tmp / "state.json"
        users = {u: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
                 for u in ("prometheus", "grafana")}
        web = "basic_auth_users:\n" + "".join(f"  {u}: '{h}'\n" for u, h in users.items())
        self.ctx = None
        if tls:
            pki = make_pki(tmp / "pki")
            web = (f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                   f"  key_file: {pki.server_key}\n") + web
            self.ctx = ssl.create_default_context(cafile=str(pki.ca))
        (tmp / "web.yml").write_text(web)
        (tmp / "c.yaml").write_text(
            f"paths: {{sysfs: {tmp / 'sys'}}}\n"
            "probes: {disabled: [nvml, cpu_model, ram_model]}\n"
            f"state: {{path: {self.state}, checkpoint_seconds: 0.2}}\n")
        env = {**os.environ, "CARBONMETER_STATE_PATH": str(self.state)}

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(tmp / "serve.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "carbonmeter", "serve", "--config", str(tmp / "c.yaml"),
                 "--listen", f"127.0.0.1:{self.port}", "--interval", "0.1",
                 "--web.config.file", str(tmp / "web.yml")],
                env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit)
        wait_for(lambda: self.get(auth())[0] == 200, what="the exporter answering")
        wait_for(self.state.exists, what="a first checkpoint")

    def connect(self, timeout: float = 5.0) -> http.client.HTTPConnection:
        if self.ctx is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx,
                                               timeout=timeout)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = self.connect()
        try:
            conn.request("GET", "/metrics", headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def attack(self, mode: str, count: int, seconds: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", ATTACKER, mode, str(self.port),
                                 str(count), str(seconds)], stdout=subprocess.PIPE, text=True)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log(self) -> str:
        return (self.tmp / "serve.log").read_text()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(20) == 0, self.log()[-3000:]


@pytest.fixture
def exporters():
    made: list[Exporter] = []

    def make(tmp: Path, **kw) -> Exporter:
        made.append(Exporter(tmp, **kw))
        return made[-1]

    yield make
    for e in made:
        if e.proc.poll() is None:
            e.proc.kill()
            e.proc.wait(10)


class Scraper:
    """The authorized client: a scrape every 20 ms, on one keep-alive connection (as
    Prometheus keeps one) or a new connection each time; each scrape's seconds."""

    def __init__(self, exporter: Exporter, *, keep_alive: bool = True) -> None:
        self.exporter = exporter
        self.keep_alive = keep_alive
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = None
        headers = auth()
        deadline = time.monotonic() + 60  # bounded, whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = self.exporter.connect()
                    self.reconnects += 1
                conn.request("GET", "/metrics", headers=headers)
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or b"carbonmeter_host_energy_joules_total" not in body:
                    raise AssertionError(f"status {r.status}")
                self.latencies.append(time.monotonic() - t0)
            except Exception as e:
                self.failures.append(repr(e))
                with contextlib.suppress(Exception):
                    conn.close()  # type: ignore[union-attr]
                conn = None
            if not self.keep_alive and conn is not None:
                conn.close()
                conn = None
            self._stop.wait(max(0.0, 0.02 - (time.monotonic() - t0)))
        if conn is not None:
            conn.close()

    def __enter__(self) -> Scraper:
        self._thread.start()
        wait_for(lambda: len(self.latencies) >= 5, what="the scraper going")
        self.latencies.clear()
        self.reconnects = 0 if self.keep_alive else self.reconnects
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98]

    def report(self, what: str) -> str:
        lat = sorted(self.latencies)
        return (f"{what}: {len(lat)} scrapes, p50 {statistics.median(lat) * 1e3:.1f} ms, "
                f"p99 {self.p99() * 1e3:.1f} ms, max {lat[-1] * 1e3:.1f} ms, "
                f"{len(self.failures)} failed")


def finish(attacker: subprocess.Popen, timeout: float = 60) -> dict:
    out, _ = attacker.communicate(timeout=timeout)
    return eval(out.strip().splitlines()[-1])  # the attacker's own dict literal


def test_a_bcrypt_flood_neither_slows_scrapes_nor_locks_out_a_new_credential(tmp_path,
                                                                           exporters):
    """Before: 1,500 wrong-password requests (bcrypt cost 10) were all checked on two
    threads with no queue limit, even after their clients had gone; a new valid credential
    then waited 45-75 s, and keep-alive scrapes were closed."""
    e = exporters(tmp_path)
    with Scraper(e) as scraper:
        attacker = e.attack("guesses", 1500, 30)
        result = finish(attacker)
        during = scraper.report("bcrypt flood")
        # a credential never seen before, right after the flood: one bcrypt, not a backlog
        t0 = time.monotonic()
        status = e.get(auth("grafana"))[0]
        new_credential_s = time.monotonic() - t0
    print(f"\n{during}; attacker: {result}; new credential answered {status} in "
          f"{new_credential_s * 1e3:.0f} ms")
    assert result["sent"] == 1500
    assert scraper.failures == [] and scraper.reconnects == 0  # never closed on it
    assert scraper.p99() < P99_S, during
    assert status == 200 and new_credential_s < 1.0
    assert set(result["answers"]) <= {"gone", "401", "503"}
    e.stop()
    assert "Traceback" not in e.log()


def test_silent_tls_connections_count_against_the_cap(tmp_path, exporters):
    """Before: 1,100 silent connections on the TLS port were not counted while in the
    handshake; at nofile=1024 (systemd's default; the exporter cannot raise it here, hard
    and soft being equal) checkpoints failed with EMFILE and scrapes took 2 s."""
    e = exporters(tmp_path, tls=True, nofile=1024)
    limits = Path(f"/proc/{e.proc.pid}/limits").read_text()
    assert any(line.startswith("Max open files") and line.split()[3:5] == ["1024", "1024"]
               for line in limits.splitlines())
    with Scraper(e) as scraper:
        attacker = e.attack("silent", 1100, 4)
        assert attacker.stdout.readline().startswith("holding")  # all connected (backlog)
        written = state.parse(e.state.read_bytes()).written_unix
        peak = 0
        for _ in range(20):  # bounded: 2 s of looking
            peak = max(peak, e.open_fds())
            time.sleep(0.1)
        checkpointed = state.parse(e.state.read_bytes()).written_unix
        result = finish(attacker)
        during = scraper.report("1,100 silent TLS connections")
    print(f"\n{during}, {scraper.reconnects} reconnects; attacker: {result}; the "
          f"exporter's descriptors peaked at {peak}")
    assert result["sent"] == 1100
    assert scraper.failures == [] and scraper.p99() < P99_S, during
    assert checkpointed > written  # checkpoints went on
    assert peak < 1024 - 100  # the cap (half the limit) held, with room to spare
    e.stop()
    log = e.log()
    assert "Too many open files" not in log and "checkpoint" not in log.lower().replace(
        "checkpointed", ""), log[-2000:]


def test_connection_churn_never_overflows_the_accept_queue(tmp_path, exporters):
    """Before: asyncio listened again with a backlog of 100, not the 1,024 asked for; at
    about 300 connect/close cycles a second the queue overflowed and fresh scrapes took
    1.0-1.15 s (a dropped SYN, retried after a second)."""
    e = exporters(tmp_path)
    with Scraper(e, keep_alive=False) as scraper:
        attacker = e.attack("churn", 300, 4)
        result = finish(attacker)
        during = scraper.report("300 connect/close a second")
    print(f"\n{during}; attacker: {result}")
    assert result["sent"] >= 900
    assert scraper.failures == [] and scraper.p99() < P99_S, during


def test_the_listen_backlog_is_the_one_asked_for(tmp_path, exporters):
    """With the exporter stopped (SIGSTOP), the kernel alone completes handshakes, into the
    accept queue, until it holds the backlog: 300 connections must all get in (asyncio's
    100 would take about 101)."""
    e = exporters(tmp_path)
    e.proc.send_signal(signal.SIGSTOP)
    held = []
    try:
        for _ in range(300):
            try:
                held.append(socket.create_connection(("127.0.0.1", e.port), timeout=0.5))
            except OSError:
                break
    finally:
        e.proc.send_signal(signal.SIGCONT)
        for s in held:
            s.close()
    assert len(held) == 300
    assert e.get(auth())[0] == 200


def test_accept_errors_are_warned_once_per_episode_and_the_soft_limit_is_raised(tmp_path,
                                                                                caplog):
    """EMFILE at accept, injected where the server accepts (the error a process out of
    descriptors gets): one WARNING when it starts, one when accepting works again."""
    import errno
    import logging

    from carbonmeter.server import http as http_server

    failures = {"left": 25}

    class Starved(http_server.HttpServer):
        async def _accept(self, loop):
            sock, addr = await super()._accept(loop)
            if failures["left"] > 0:
                failures["left"] -= 1
                sock.close()
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return sock, addr

    caplog.set_level(logging.DEBUG, logger="carbonmeter.server.http")
    server = Starved("127.0.0.1", 0, {"/": lambda req: http_server.Response(200, b"ok\n")})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        for _ in range(26):  # bounded: 25 refused, then one answered
            with contextlib.suppress(OSError, http.client.HTTPException):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/")
                if c.getresponse().status == 200:
                    break
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2, warnings
        assert "cannot accept connections: Too many open files" in warnings[0]
        assert "accepting connections again" in warnings[1]
    finally:
        server.shutdown()
        server.server_close()
    # the exporter's own start raises the soft limit to the hard one
    script = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096));"
              "from carbonmeter.server.http import raise_open_files_limit as r; print(r())")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=30)
    assert json.loads(out.stdout.replace("(", "[").replace(")", "]")) == [4096, 4096]
