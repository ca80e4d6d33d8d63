"""Local stand-ins for the grid data services, answering with their documented shapes.

One HTTP server on 127.0.0.1 serves all of them, each at the path the real service uses,
so a provider is pointed at it with `url:` and runs its real code (urllib, headers, JSON):

- Electricity Maps v3: GET /v3/carbon-intensity/latest?zone=Z with an `auth-token` header;
  401 with {"status": "error", "message": ...} for a wrong token; the answer has zone,
  carbonIntensity, datetime, updatedAt, createdAt, emissionFactorType, isEstimated,
  estimationMethod and temporalGranularity, as the API reference shows.
- WattTime v3: GET /login with HTTP basic auth returns {"token": ...}; GET /v3/forecast with
  `Authorization: Bearer` returns {"data": [{"point_time", "value"}, ...], "meta": {...,
  "units": "lbs_co2_per_mwh"}}; a token the server no longer knows (expired) gets 401.
- UK Carbon Intensity API: GET /intensity ({"data": [{"from", "to", "intensity": {"forecast",
  "actual", "index"}}]}, actual null until measured), /regional/regionid/N and
  /regional/postcode/PC ({"data": [{"regionid", "dnoregion", "shortname", "data": [{...
  "intensity": {"forecast", "index"}, "generationmix": [...]}]}]}).
- Anything else: what a test put in `custom[path]`.

Failures are scripted per path with `script(path, Reply(...), ...)`, consumed in order before
the normal answer: any status with headers (429 + Retry-After), a delay before answering, a
body trickled byte by byte, a hang until the server stops, any body bytes.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.helpers import free_port

EM_TOKEN = "em-Tok3n-never-in-logs"
WT_USER = "carbonmeter-test"
WT_PASSWORD = "wt-Passw0rd-never-in-logs"


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list: sent as JSON; bytes: sent as they are; None: {}
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line
    trickle: float | None = None  # seconds between body bytes
    hang: bool = False  # never answer (until the server stops)


@dataclass
class Request:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float  # monotonic


class GridApis:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[Request] = []
        self.scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self.custom: dict[str, Any] = {}
        self.em_value: float = 302.0
        self.wt_moer: float = 870.5  # lb/MWh
        self.wt_units: str | None = "lbs_co2_per_mwh"
        self.uk_actual: float | None = 263.0
        self.uk_forecast: float = 266.0
        self.uk_region_forecast: float = 187.0
        self.tokens: set[str] = set()
        self.logins = 0
        self.stopping = threading.Event()
        self._server = self._make()

    def script(self, path: str, *replies: Reply) -> None:
        self.scripts[path].extend(replies)

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def hits(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def __enter__(self) -> GridApis:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    # --- the services' normal answers -------------------------------------------------------

    def _answer(self, path: str, q: dict[str, str], h: dict[str, str]) -> Reply:
        if path == "/v3/carbon-intensity/latest":
            if h.get("auth-token") != EM_TOKEN:
                return Reply(401, {"status": "error", "message": "Invalid auth-token"})
            return Reply(body={
                "zone": q.get("zone", ""), "carbonIntensity": self.em_value,
                "datetime": "2024-05-01T10:00:00.000Z",
                "updatedAt": "2024-05-01T10:41:07.317Z", "createdAt": "2024-04-28T10:43:20.913Z",
                "emissionFactorType": "lifecycle", "isEstimated": True,
                "estimationMethod": "TIME_SLICER_AVERAGE", "temporalGranularity": "hourly"})
        if path == "/login":
            expected = base64.b64encode(f"{WT_USER}:{WT_PASSWORD}".encode()).decode()
            if h.get("authorization") != f"Basic {expected}":
                return Reply(401, b"Unauthorized")  # WattTime answers plain text here
            self.logins += 1
            token = f"wt-bearer-{self.logins}-never-in-logs"
            self.tokens.add(token)
            return Reply(body={"token": token})
        if path == "/v3/forecast":
            auth = h.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return Reply(401, {"error": "Unauthorized"})
            meta: dict[str, Any] = {
                "data_point_period_seconds": 300, "region": q.get("region"), "warnings": [],
                "signal_type": q.get("signal_type"), "model": {"date": "2023-03-01"},
                "generated_at_period_seconds": 300,
                "generated_at": "2024-05-01T10:35:00+00:00"}
            if self.wt_units is not None:
                meta["units"] = self.wt_units
            return Reply(body={"data": [
                {"point_time": "2024-05-01T10:35:00+00:00", "value": self.wt_moer},
                {"point_time": "2024-05-01T10:40:00+00:00", "value": self.wt_moer + 5}],
                "meta": meta})
        if path == "/intensity":
            return Reply(body={"data": [{
                "from": "2018-01-20T12:00Z", "to": "2018-01-20T12:30Z",
                "intensity": {"forecast": self.uk_forecast, "actual": self.uk_actual,
                              "index": "moderate"}}]})
        if path.startswith("/regional/"):
            kind, _, key = path[len("/regional/"):].partition("/")
            region = {"regionid": 13, "dnoregion": "UKPN London", "shortname": "London"}
            if kind == "postcode":
                region = {"regionid": 12, "dnoregion": "SSE South", "shortname": "South England",
                          "postcode": key}
            elif key != "13":
                return Reply(400, {"error": {"code": "400 Bad Request",
                                             "message": "Please enter a valid region ID"}})
            return Reply(body={"data": [{**region, "data": [{
                "from": "2018-01-20T12:00Z", "to": "2018-01-20T12:30Z",
                "intensity": {"forecast": self.uk_region_forecast, "index": "low"},
                "generationmix": [{"fuel": "gas", "perc": 43.6}, {"fuel": "wind", "perc": 30.1},
                                  {"fuel": "nuclear", "perc": 26.3}]}]}]})
        if path in self.custom:
            return Reply(body=self.custom[path])
        return Reply(404, {"error": "not found"})

    def _make(self) -> ThreadingHTTPServer:
        apis = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(parts.query))
                h = {k.lower(): v for k, v in self.headers.items()}
                apis.requests.append(Request(parts.path, q, h, time.monotonic()))
                queue = apis.scripts.get(parts.path)
                reply = queue.popleft() if queue else apis._answer(parts.path, q, h)
                if reply.hang:
                    apis.stopping.wait(60)
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body if reply.body is not None else {}
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    if reply.trickle is None:
                        self.wfile.write(data)
                        return
                    for i in range(len(data)):
                        if apis.stopping.wait(reply.trickle):
                            return
                        self.wfile.write(data[i:i + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as it should on a slow body

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        return Server(("127.0.0.1", self.port), Handler)
