"""The endpoint a scraper and a liveness probe see: /metrics, /healthz and a landing page."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING

from carbonmeter.server.http import HttpServer, Request, Response
from carbonmeter.version import version

if TYPE_CHECKING:
    from carbonmeter.server.webconfig import WebConfig

# (Accept header, gzip accepted) -> (body, content type): the exposition of the latest sample
Render = Callable[[str | None, bool], tuple[bytes, str]]


LANDING = """<!doctype html><html><head><meta charset="utf-8"><title>carbonmeter</title></head>
<body><h1>carbonmeter {version}</h1>
<p>Energy and CO<sub>2</sub>eq of this host, for Prometheus.</p>
<ul><li><a href="/metrics">/metrics</a> &mdash; Prometheus and OpenMetrics exposition</li>
<li><a href="/healthz">/healthz</a> &mdash; 200 while sampling, 503 when stalled</li></ul>
</body></html>
"""


def make_server(host: str, port: int, render: Render, alive: Callable[[], bool],
                web: WebConfig | None = None, *, healthz_auth: bool = False) -> HttpServer:
    """The HTTP endpoint for /metrics, /healthz and /, with TLS and basic auth when `web`
    says so (/healthz without auth unless `healthz_auth`: probes send no credentials);
    call serve_forever() on it (the socket is already bound)."""
    landing = LANDING.format(version=version()).encode()

    def metrics(req: Request) -> Response:
        gz = "gzip" in req.headers.get("accept-encoding", "")
        body, ctype = render(req.headers.get("accept"), gz)
        return Response(HTTPStatus.OK, body, ctype, {"Content-Encoding": "gzip"} if gz else {})

    def healthz(req: Request) -> Response:
        if alive():
            return Response(HTTPStatus.OK, b"ok\n")
        return Response(HTTPStatus.SERVICE_UNAVAILABLE, b"sampler stalled\n")

    def index(req: Request) -> Response:
        return Response(HTTPStatus.OK, landing, "text/html; charset=utf-8")

    return HttpServer(host, port, {"/metrics": metrics, "/healthz": healthz, "/": index},
                      tls=web.tls if web else None, auth=web.auth() if web else None,
                      headers=web.headers if web else None,
                      public=frozenset() if healthz_auth else frozenset({"/healthz"}))
