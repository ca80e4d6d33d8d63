"""Pushgateway: the /metrics families pushed to a Prometheus Pushgateway.

For what Prometheus cannot scrape in time: a batch job that ends between two scrapes,
a host behind NAT. The pushed text is rendered by the same SnapshotCollector as
/metrics, so names, TYPE lines (counters stay counters) and values are identical.

A push is a PUT: it replaces the whole group (job, instance and `grouping` labels), so a
series that disappeared from the snapshot disappears from the gateway too. Other groups
are never touched.
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import delete_from_gateway, push_to_gateway

from carbonmeter.config import Pushgateway
from carbonmeter.sinks.outage import Outage
from carbonmeter.sinks.prometheus import SnapshotCollector
from carbonmeter.snapshot import Snapshot

log = logging.getLogger(__name__)


class PushError(Exception):
    """A push or delete that failed; str() is one line a person can act on."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message  # the cause alone, without the URL


def grouping_key(cfg: Pushgateway) -> dict[str, str]:
    """The labels (besides job) that name this pusher's group."""
    return {"instance": cfg.instance or socket.gethostname(), **cfg.grouping}


def _tls_context(cfg: Pushgateway) -> ssl.SSLContext | None:
    if cfg.certificate is None and cfg.client_certificate is None:
        return None  # urllib's default: the system's trusted CAs
    ctx = ssl.create_default_context(cafile=cfg.certificate)
    if cfg.client_certificate is not None:
        ctx.load_cert_chain(cfg.client_certificate, cfg.client_key)
    return ctx


def _handler(cfg: Pushgateway) -> Callable[..., Callable[[], None]]:
    """A prometheus_client push handler with basic auth and TLS together (its own
    basic_auth_handler cannot verify against a private CA, its tls_auth_handler
    requires a client certificate)."""
    auth = None
    if cfg.username is not None and cfg.password is not None:
        auth = "Basic " + base64.b64encode(f"{cfg.username}:{cfg.password}".encode()).decode()
    context = _tls_context(cfg)

    def handler(url: str, method: str, timeout: float | None,
                headers: list[tuple[str, str]], data: bytes) -> Callable[[], None]:
        def send() -> None:
            req = urllib.request.Request(url, data=data, method=method)
            for k, v in headers:
                req.add_header(k, v)
            if auth:
                req.add_header("Authorization", auth)
            with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
                r.read()

        return send

    return handler


def _describe(e: Exception, timeout: float) -> str:
    if isinstance(e, urllib.error.HTTPError):
        detail = e.read(300).decode("utf-8", "replace").strip().splitlines()
        hint = ""
        if e.code == 401:
            hint = " (check pushgateway.username and pushgateway.password)"
        return f"HTTP {e.code} {e.reason}{hint}" + (f": {detail[0]}" if detail else "")
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, Exception) else e
    if isinstance(e, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g}s"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def push_snapshot(cfg: Pushgateway, snapshot: Snapshot, *, delete: bool = False) -> None:
    """Push `snapshot` to the group, replacing what it held; with delete=True remove the
    group instead. For one push at exit (`carbonmeter run`, the Python API) and for
    each push of `serve`. Raises PushError, never anything else."""
    if cfg.url is None:
        raise PushError("pushgateway.url is not set")
    try:
        if delete:
            delete_from_gateway(cfg.url, cfg.job, grouping_key(cfg),
                                timeout=cfg.timeout_seconds, handler=_handler(cfg))
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(lambda: snapshot))
            push_to_gateway(cfg.url, cfg.job, registry, grouping_key(cfg),
                            timeout=cfg.timeout_seconds, handler=_handler(cfg))
    except Exception as e:
        verb = "delete from" if delete else "push to"
        reason = _describe(e, cfg.timeout_seconds)
        raise PushError(f"cannot {verb} {cfg.url}: {reason}", reason) from e


class PushgatewaySink:
    """Pushes the latest snapshot every `interval` seconds; close() pushes the final
    totals (or deletes the group when `delete_on_exit`)."""

    def __init__(self, cfg: Pushgateway, latest: Callable[[], Snapshot],
                 interval: float) -> None:
        self.cfg = cfg
        self.latest = latest
        self.interval = cfg.interval_seconds or interval
        self.outage = Outage(log, f"push to {cfg.url}", self.interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pushgateway", daemon=True)

    def start(self) -> PushgatewaySink:
        self._thread.start()
        labels = ", ".join(f"{k}={v}" for k, v in
                           {"job": self.cfg.job, **grouping_key(self.cfg)}.items())
        log.info("pushing to %s every %gs as {%s}", self.cfg.url, self.interval, labels)
        return self

    def push(self) -> bool:
        try:
            push_snapshot(self.cfg, self.latest())
        except PushError as e:
            self.outage.failed(e.reason)
            return False
        self.outage.succeeded()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def close(self) -> bool:
        """The final push (or the delete); True when it was accepted."""
        self._stop.set()
        self._thread.join(timeout=self.cfg.timeout_seconds + 1)
        delete = self.cfg.delete_on_exit
        try:
            push_snapshot(self.cfg, self.latest(), delete=delete)
        except PushError as e:
            log.warning("at exit: %s", e)
            return False
        log.info("%s the Pushgateway group at exit", "deleted" if delete else "pushed the "
                 "final totals to")
        return True


def start(cfg: Pushgateway, latest: Callable[[], Snapshot], interval: float) -> PushgatewaySink:
    return PushgatewaySink(cfg, latest, interval).start()
