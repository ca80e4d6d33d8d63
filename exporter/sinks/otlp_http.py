"""OTLP/HTTP's one POST an interval, on the standard library's http.client.

The SDK's own transport is requests (with urllib3, charset_normalizer, idna): about 6 MB of
memory and 90 ms of start-up for a request that http.client makes as well. The SDK takes a
transport where it has the transport interface (opentelemetry-exporter-http-transport);
where it has not, or where a proxy variable applies to the endpoint (requests honours
HTTPS_PROXY and NO_PROXY, http.client does not), the requests session is used instead.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry.exporter.http.transport._base import BaseHTTPResult, BaseHTTPTransport


def direct(endpoint: str) -> bool:
    """Whether no proxy variable applies to the endpoint."""
    u = urllib.parse.urlsplit(endpoint)
    return u.scheme not in urllib.request.getproxies() or \
        bool(urllib.request.proxy_bypass(u.hostname or ""))


@dataclass(frozen=True, slots=True)
class Result(BaseHTTPResult):
    body: bytes = b""
    head: Mapping[str, str] = field(default_factory=dict)  # an HTTPMessage: any case

    def content(self) -> bytes:
        return self.body

    def headers(self) -> Mapping[str, str]:
        return self.head


class Transport(BaseHTTPTransport):
    """One kept-alive connection to the collector; `verify` is True, False or a CA file,
    `cert` a client certificate file or (certificate, key). `last_error` is the last
    request's failure, for the outage line (the SDK does not log it)."""

    def __init__(self, *, verify: bool | str = True,
                 cert: str | tuple[str, str] | None = None) -> None:
        self.verify, self.cert = verify, cert
        self._context: ssl.SSLContext | None = None
        self._conn: http.client.HTTPConnection | None = None
        self._where: tuple[str, str] | None = None
        self.last_error: Exception | None = None

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            ctx = ssl.create_default_context(
                cafile=self.verify if isinstance(self.verify, str) else None)
            if self.verify is False:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if self.cert:
                certfile, keyfile = self.cert if isinstance(self.cert, tuple) else (self.cert,
                                                                                    None)
                ctx.load_cert_chain(certfile, keyfile)
            self._context = ctx
        return self._context

    def request(self, method: str, url: str, *, headers: dict[str, str] | None = None,
                timeout: float | None = None, data: bytes | None = None) -> Result:
        u = urllib.parse.urlsplit(url)
        try:
            if self._conn is None or self._where != (u.scheme, u.netloc):
                self.close()
                if u.scheme == "https":
                    self._conn = http.client.HTTPSConnection(u.hostname or "", u.port,
                                                             timeout=timeout,
                                                             context=self._tls())
                else:
                    self._conn = http.client.HTTPConnection(u.hostname or "", u.port,
                                                            timeout=timeout)
                self._where = (u.scheme, u.netloc)
            conn = self._conn
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, (u.path or "/") + (f"?{u.query}" if u.query else ""),
                         body=data, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
        except Exception as e:  # a refused connection, a timeout, a bad certificate
            self.close()
            self.last_error = e
            return Result(error=e)
        if response.will_close:
            self.close()
        return Result(status_code=response.status, reason=response.reason, body=body,
                      head=response.headers)

    def is_connection_error(self, exception: Exception | None) -> bool:
        return isinstance(exception, (OSError, http.client.HTTPException))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
