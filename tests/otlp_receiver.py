"""An OTLP metrics receiver, as an OpenTelemetry Collector's otlp receiver serves it.

Both transports of the OTLP specification, decoded with the official opentelemetry-proto
classes (the ones the Collector's protocol is generated from):

- gRPC: the service opentelemetry.proto.collector.metrics.v1.MetricsService, method Export;
- HTTP: POST /v1/metrics with a binary ExportMetricsServiceRequest
  (Content-Type application/x-protobuf, gzip when Content-Encoding says so), answered 200
  with an ExportMetricsServiceResponse; other paths 404, other content types 415.

Optionally over TLS (a PEM certificate and key). `stop()` then `start()` serve the same
port again: a collector that goes away and comes back. `delay` makes every answer late:
a slow collector.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import ssl
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as service_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.helpers import free_port

ExportRequest = service_pb2.ExportMetricsServiceRequest


def attributes(kvs: list[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@dataclass
class Point:
    """One data point with everything around it, flattened for assertions."""

    resource: dict[str, Any]
    scope: str
    metric: str
    unit: str
    kind: str  # "sum" or "gauge"
    monotonic: bool | None
    temporality: int | None  # AggregationTemporality: 1 delta, 2 cumulative
    attributes: dict[str, Any]
    value: float
    start_ns: int
    time_ns: int


@dataclass
class Received:
    request: Any  # ExportMetricsServiceRequest
    headers: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)

    def points(self) -> list[Point]:
        out = []
        for rm in self.request.resource_metrics:
            res = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    data = getattr(m, kind)
                    mono = data.is_monotonic if kind == "sum" else None
                    temp = data.aggregation_temporality if kind == "sum" else None
                    for p in data.data_points:
                        value = p.as_double if p.WhichOneof("value") == "as_double" \
                            else float(p.as_int)
                        out.append(Point(res, sm.scope.name, m.name, m.unit, kind, mono, temp,
                                         attributes(p.attributes), value,
                                         p.start_time_unix_nano, p.time_unix_nano))
        return out


class Receiver:
    """A receiver for `protocol` ("grpc" or "http/protobuf") on a free 127.0.0.1 port."""

    def __init__(self, protocol: str, *, delay: float = 0.0,
                 tls: tuple[str, str] | None = None) -> None:
        self.protocol = protocol
        self.delay = delay
        self.tls = tls  # (certificate file, key file)
        self.port = free_port()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: Any = None
        self._connections: set[socket.socket] = set()

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        path = "/v1/metrics" if self.protocol == "http/protobuf" else ""
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def _keep(self, request: Any, headers: dict[str, str]) -> None:
        with self._lock:
            self.received.append(Received(request, headers))

    def start(self) -> Receiver:
        if self.protocol == "grpc":
            self._server = self._start_grpc()
        else:
            self._server = self._start_http()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        if self.protocol == "grpc":
            self._server.stop(grace=None).wait(5)
        else:
            self._server.shutdown()
            self._server.server_close()
            for conn in list(self._connections):  # kept-alive connections die with it
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- gRPC ---------------------------------------------------------------------------

    def _start_grpc(self) -> grpc.Server:
        receiver = self

        class MetricsService(service_grpc.MetricsServiceServicer):
            def Export(self, request, context):
                time.sleep(receiver.delay)
                receiver._keep(request, dict(context.invocation_metadata()))
                return service_pb2.ExportMetricsServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service_grpc.add_MetricsServiceServicer_to_server(MetricsService(), server)
        address = f"127.0.0.1:{self.port}"
        if self.tls:
            cert, key = (Path(p).read_bytes() for p in self.tls)
            server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        else:
            server.add_insecure_port(address)
        server.start()
        return server

    # -- HTTP ---------------------------------------------------------------------------

    def _start_http(self) -> ThreadingHTTPServer:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                receiver._connections.add(self.connection)

            def finish(self) -> None:
                receiver._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/metrics":
                    return self._answer(404, b"")
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    return self._answer(415, b"")
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                time.sleep(receiver.delay)
                request = ExportRequest()
                request.ParseFromString(body)
                receiver._keep(request, {k.lower(): v for k, v in self.headers.items()})
                self._answer(200, service_pb2.ExportMetricsServiceResponse()
                             .SerializeToString())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        server = Server(("127.0.0.1", self.port), Handler)
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    # -- reading what arrived -----------------------------------------------------------

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def last(self, metric: str, **attrs: Any) -> Point | None:
        """The latest point of `metric` whose attributes include `attrs`."""
        for r in reversed(self.requests()):
            for p in r.points():
                if p.metric == metric and all(p.attributes.get(k) == v
                                              for k, v in attrs.items()):
                    return p
        return None
