"""The HTTP endpoint under abuse: methods, heads, slow and many clients, TLS, basic auth.

Clients here speak raw sockets where a normal client library would refuse to send what
is being tested (oversized or malformed heads, slowloris).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import threading
import time

import bcrypt
import pytest

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.config import ConfigError
from carbonmeter.sampler import Sampler
from carbonmeter.server import http as http_server
from carbonmeter.server import webconfig
from carbonmeter.server.endpoint import make_server
from carbonmeter.sinks.prometheus import Renderer
from tests.fixtures.certs import make_pki
from tests.helpers import http_get
from tests.sinks.test_prometheus import scripted


@pytest.fixture
def sampler():
    s = Sampler([scripted()], Static(Intensity(56.0, "FR", "bundled", "test")), pue=1.0,
                interval=3600)
    s.sample()
    s.sample()
    return s


@pytest.fixture
def endpoint(sampler):
    """(host, port) of a plain endpoint over `sampler`, stopped after the test."""
    servers = []

    def start(web: webconfig.WebConfig | None = None, latest=None):
        server = make_server("127.0.0.1", 0, Renderer(latest or (lambda: sampler.latest)).render,
                             lambda: True, web)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return "127.0.0.1", server.server_address[1]

    start.servers = servers  # type: ignore[attr-defined]
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def raw(addr, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` and read until the server closes or goes quiet."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and b"Connection: close" not in chunks[0]:
                    s.settimeout(0.3)  # keep-alive: take what came, then stop waiting
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def scrape_ok(addr) -> float:
    t0 = time.monotonic()
    status, _, body = http_get(f"http://{addr[0]}:{addr[1]}/metrics", timeout=5)
    assert status == 200 and b"carbonmeter_host_energy_joules_total" in body
    return time.monotonic() - t0


@pytest.mark.parametrize(("request_bytes", "status", "extra"), [
    (b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n", b"405 Method Not Allowed",
     b"Allow: GET, HEAD"),
    (b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", b"405", b"Allow: GET, HEAD"),
    (b"OPTIONS /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"405", b"Allow: GET, HEAD"),
    (b"PUT /nope HTTP/1.1\r\nHost: x\r\n\r\n", b"404 Not Found", b""),
    (b"GET /metrics/../etc/passwd HTTP/1.1\r\n\r\n", b"404", b""),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"400 Bad Request",
     b"Connection: close"),
    (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400",
     b"request bodies are not accepted"),
    (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
     b"431 Request Header Fields Too Large", b"Connection: close"),
    (b"GET /metrics HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", b"431",
     b"more than 100 header lines"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", b"400", b"malformed"),
    (b"GET\r\n\r\n", b"400", b"malformed request line"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"505 HTTP Version Not Supported", b""),
    (b"GET /metrics HTTP/1.1\r\nBad Header: x\r\n\r\n", b"400", b"malformed header line"),
])
def test_only_well_formed_get_and_head_on_known_paths(endpoint, request_bytes, status, extra):
    addr = endpoint()
    reply = raw(addr, request_bytes)
    assert reply.startswith(b"HTTP/1.1 " + status), reply[:200]
    assert extra in reply
    assert b"Traceback" not in reply and b"carbonmeter_" not in reply
    scrape_ok(addr)  # and the endpoint carries on


def test_head_answers_headers_only_and_keep_alive_works(endpoint):
    addr = endpoint()
    conn = http.client.HTTPConnection(*addr, timeout=5)
    conn.request("HEAD", "/metrics")
    r = conn.getresponse()
    assert r.status == 200 and int(r.headers["Content-Length"]) > 100 and r.read() == b""
    for _ in range(3):  # the same connection serves the next requests
        conn.request("GET", "/metrics?name[]=x", headers={"Accept-Encoding": "gzip"})
        r = conn.getresponse()
        assert r.status == 200 and r.headers["Content-Encoding"] == "gzip" and r.read()
    conn.close()


def test_a_failing_handler_answers_500_without_a_traceback(endpoint, caplog):
    def broken():
        raise RuntimeError("secret detail /etc/carbonmeter")

    addr = endpoint(latest=broken)
    status, _, body = http_get(f"http://{addr[0]}:{addr[1]}/metrics")
    assert (status, body) == (500, b"internal error\n")
    assert "secret detail" in caplog.text  # logged for the operator, not sent


def test_slowloris_and_connection_floods_never_block_a_scrape(endpoint, monkeypatch):
    """300 connections dribbling a request head a byte at a time, more than the connection
    limit: scrapes stay fast, the oldest dribblers are closed to make room, and all of them
    are cut off when the head timeout expires."""
    monkeypatch.setattr(http_server, "HEAD_TIMEOUT", 1.5)
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 200)
    addr = endpoint()
    normal = max(scrape_ok(addr) for _ in range(3))
    socks = []
    for _ in range(300):
        s = socket.create_connection(addr, timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        socks.append(s)
    stop = threading.Event()

    def dribble():
        while not stop.is_set():
            for s in socks:
                with contextlib.suppress(OSError):  # closed by the server: as expected
                    s.send(b"X")
            stop.wait(0.2)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        latencies = []
        while time.monotonic() - t0 < 1.0:
            latencies.append(scrape_ok(addr))
        assert max(latencies) < max(0.5, 10 * normal), latencies
        time.sleep(1.5)  # past the head timeout
        closed = 0
        for s in socks:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 1
        assert closed == len(socks)
        scrape_ok(addr)
    finally:
        stop.set()
        for s in socks:
            s.close()


def test_idle_keep_alive_connections_are_evicted_oldest_first(endpoint, monkeypatch):
    monkeypatch.setattr(http_server, "MAX_CONNECTIONS", 20)
    addr = endpoint()
    idle = [socket.create_connection(addr, timeout=5) for _ in range(40)]
    try:
        for _ in range(10):
            scrape_ok(addr)
        idle[0].settimeout(2)
        assert idle[0].recv(1) == b""  # the oldest was closed to make room
    finally:
        for s in idle:
            s.close()


# -- TLS and basic auth ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def web(tmp_path, text: str):
    path = tmp_path / "web.yml"
    path.write_text(text)
    return webconfig.load(str(path))


def client_context(pki, *, cert: bool = False, max_version=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def https_status(addr, ctx, headers=None) -> int:
    conn = http.client.HTTPSConnection(addr[0], addr[1], context=ctx, timeout=5)
    try:
        conn.request("GET", "/metrics", headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


def test_tls_serves_https_and_refuses_plain_http(endpoint, tmp_path, pki):
    addr = endpoint(web(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                                  f"  key_file: {pki.server_key}\n"))
    assert https_status(addr, client_context(pki)) == 200
    reply = raw(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"carbonmeter_" not in reply and not reply.startswith(b"HTTP/1.1 200")
    with pytest.raises(ssl.SSLCertVerificationError):  # a client trusting another CA
        https_status(addr, ssl.create_default_context(cafile=str(pki.other_ca)))
    assert https_status(addr, client_context(pki)) == 200


def test_tls_min_version_is_enforced(endpoint, tmp_path, pki):
    addr = endpoint(web(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                                  f"  key_file: {pki.server_key}\n  min_version: TLS13\n"))
    with pytest.raises(ssl.SSLError):
        https_status(addr, client_context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    assert https_status(addr, client_context(pki)) == 200


def test_client_certificates_required_and_verified(endpoint, tmp_path, pki):
    addr = endpoint(web(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                                  f"  key_file: {pki.server_key}\n"
                                  f"  client_auth_type: RequireAndVerifyClientCert\n"
                                  f"  client_ca_file: {pki.ca}\n"))
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        https_status(addr, client_context(pki))
    assert https_status(addr, client_context(pki, cert=True)) == 200


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_basic_auth_with_bcrypt_hashes(endpoint, tmp_path):
    hashed = bcrypt.hashpw(b"s3cret pass", bcrypt.gensalt(rounds=4)).decode()
    hashed_2y = "$2y$" + hashed[4:]  # what htpasswd -B writes
    addr = endpoint(web(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n"
                                  f"  grafana: '{hashed_2y}'\n"))
    url = f"http://{addr[0]}:{addr[1]}/metrics"
    status, headers, body = http_get(url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert b"carbonmeter_" not in body
    for bad in (basic("prometheus", "wrong"), basic("nobody", "s3cret pass"),
                basic("prometheus", "s3cret pass" + "x" * 100), {"Authorization": "Basic !!"},
                {"Authorization": "Bearer s3cret pass"}):
        assert http_get(url, bad)[0] == 401
    for _ in range(3):  # verified once with bcrypt, then from the cache
        assert http_get(url, basic("prometheus", "s3cret pass"))[0] == 200
    assert http_get(url, basic("grafana", "s3cret pass"))[0] == 200
    assert http_get(url, basic("grafana", "wrong"))[0] == 401


@pytest.mark.parametrize(("text", "expected"), [
    ("tls_server_confg: {}\n", r"web.yml: unknown key 'tls_server_confg'; did you mean "
                               r"'tls_server_config'"),
    ("tls_server_config:\n  cert_fil: a\n", r"did you mean 'tls_server_config.cert_file'"),
    ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
     r"tls_server_config.cipher_suites is not supported by carbonmeter \(supported: cert_file"),
    ("tls_server_config:\n  key_file: k\n", r"tls_server_config.cert_file: must be the path"),
    ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
     r"tls_server_config.cert_file: .*missing.crt is not a readable file"),
    ("basic_auth_users:\n  prometheus: plaintext\n",
     r"basic_auth_users.prometheus: must be a bcrypt hash"),
    ("http_server_config:\n  headers: {Server: x}\n",
     r"http_server_config.headers.Server: not allowed \(allowed: Content-Security-Policy"),
    ("http_server_config:\n  http2: maybe\n", r"http_server_config.http2: must be true or"),
    ("- a\n", r"the top level must be a mapping"),
])
def test_web_config_errors_name_file_key_and_what_is_allowed(tmp_path, text, expected):
    with pytest.raises(ConfigError, match=expected) as e:
        web(tmp_path, text)
    assert str(e.value).startswith(f"{tmp_path / 'web.yml'}: ")


def test_web_config_certificate_errors(tmp_path, pki):
    with pytest.raises(ConfigError, match=r"cert_file/key_file: cannot load"):
        web(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                      f"  key_file: {pki.client_key}\n")
    with pytest.raises(ConfigError, match=r"client_auth_type: 'RequireAnyClientCert' is not "
                                          r"supported by carbonmeter; allowed: NoClientCert"):
        web(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                      f"  key_file: {pki.server_key}\n  client_auth_type: RequireAnyClientCert\n")
    with pytest.raises(ConfigError, match=r"client_ca_file: must be the path"):
        web(tmp_path, f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
                      f"  key_file: {pki.server_key}\n"
                      f"  client_auth_type: RequireAndVerifyClientCert\n")



def test_keep_alive_answers_are_not_held_back_by_nagle(endpoint):
    """A keep-alive scraper (Prometheus reuses its connection) must get each answer at once:
    a response written as two segments on a socket without TCP_NODELAY waits for the
    client's delayed ACK, 40 ms a scrape on Linux. Accepted sockets inherit TCP_NODELAY from
    the listening one, and head and body leave in one write."""
    addr = endpoint()
    server = next(s for s in endpoint.servers if s.server_address[1] == addr[1])
    assert server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    with socket.create_connection(addr, timeout=5) as s:
        for _ in range(3):  # the same connection, as a scraper uses it
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += s.recv(65536)
            assert body.startswith(b"# HELP") and len(body) == length
