"""OTLP/HTTP on http.client: what the requests transport did (a private CA, a client
certificate, a kept-alive connection), without loading requests."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import typing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fixtures.certs import make_pki

pytest.importorskip("opentelemetry.exporter.http.transport._base")


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: typing.ClassVar[set[int]] = set()

    def do_POST(self) -> None:
        self.connections.add(id(self.connection))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Retry-After", "3")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mtls(tmp_path):
    pki = make_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    ctx.load_verify_locations(pki.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED  # a collector that asks for the client's certificate
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Echo.connections = set()
    yield pki, f"https://127.0.0.1:{server.server_address[1]}/v1/metrics"
    server.shutdown()


def test_a_client_certificate_and_a_private_ca(mtls):
    from carbonmeter.sinks.otlp_http import Transport

    pki, url = mtls
    t = Transport(verify=str(pki.ca), cert=(str(pki.client_cert), str(pki.client_key)))
    for body in (b"one", b"two"):
        r = t.request("POST", url, data=body, headers={"Content-Type": "x"}, timeout=5)
        assert (r.status_code, r.content(), r.headers().get("retry-after")) == (200, body, "3")
    assert len(_Echo.connections) == 1  # kept alive
    t.close()

    refused = Transport(verify=str(pki.ca)).request("POST", url, data=b"x", timeout=5)
    assert refused.status_code is None and refused.error is not None  # no client certificate
    untrusted = Transport(verify=str(pki.other_ca), cert=(str(pki.client_cert),
                                                          str(pki.client_key)))
    r = untrusted.request("POST", url, data=b"x", timeout=5)
    assert isinstance(r.error, ssl.SSLError) and untrusted.is_connection_error(r.error)
    assert untrusted.last_error is r.error  # for the outage line


def test_an_otlp_http_export_loads_no_requests():
    code = """
import sys, time
from tests.otlp_receiver import Receiver
from tests.sinks.test_otlp import otlp_config, snapshot
from carbonmeter.sinks.otlp import OtlpSink
with Receiver("http/protobuf") as receiver:
    sink = OtlpSink(otlp_config(receiver.endpoint, "http/protobuf"), lambda: snapshot(1, 5.0))
    sink.start()
    sink.close()
    assert sink.delivered and receiver.last("hw.energy").value == 5.0
print(sorted(m for m in ("requests", "urllib3") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2],
                         env={"NO_PROXY": "*", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stderr


def test_a_proxy_for_the_endpoint_keeps_the_requests_session(monkeypatch):
    """requests honours HTTPS_PROXY and NO_PROXY and http.client does not: where a proxy
    applies to the collector, the export must still go through it."""
    from carbonmeter.sinks.otlp import _http_client
    from tests.sinks.test_otlp import otlp_config

    cfg = otlp_config("https://collector.example:4318/v1/metrics", "http/protobuf")
    for name in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    session, transport = _http_client(cfg)
    assert session is None and transport is not None  # direct: http.client

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    session, transport = _http_client(cfg)
    assert transport is None and session is not None  # through the proxy: requests

    monkeypatch.setenv("NO_PROXY", "collector.example")
    session, transport = _http_client(cfg)
    assert session is None and transport is not None
