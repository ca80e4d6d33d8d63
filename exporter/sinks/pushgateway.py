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
import urllib.error
import urllib.request
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import delete_from_gateway, push_to_gateway

from carbonmeter.config import PushgatewayConfig
from carbonmeter.periodic import Periodic
from carbonmeter.sinks.outage import Outage
from carbonmeter.sinks.prometheus import SnapshotCollector
from carbonmeter.snapshot import Snapshot

log = logging.getLogger(__name__)


class PushError(Exception):
    """A push or delete that failed; str() is one line a person can act on."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message  # the cause alone, without the URL


def grouping_key(cfg: PushgatewayConfig) -> dict[str, str]:
    """The labels (besides job) that name this pusher's group."""
    return {"instance": cfg.instance or socket.gethostname(), **cfg.grouping}


def _tls_context(cfg: PushgatewayConfig) -> ssl.SSLContext | None:
    if cfg.certificate is None and cfg.client_certificate is None:
        return None  # urllib's default: the system's trusted CAs
    ctx = ssl.create_default_context(cafile=cfg.certificate)
    if cfg.client_certificate is not None:
        ctx.load_cert_chain(cfg.client_certificate, cfg.client_key)
    return ctx


def _handler(cfg: PushgatewayConfig) -> Callable[..., Callable[[], None]]:
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


def push_snapshot(cfg: PushgatewayConfig, snapshot: Snapshot, *, delete: bool = False,
                  cursor: str | None = None) -> None:
    """Push `snapshot` to the group, replacing what it held; with delete=True remove the
    group instead. For one push at exit (`carbonmeter run`, the Python API) and for
    each push of `serve`; `cursor`: the name its workload rows are acknowledged under.
    Raises PushError, never anything else."""
    if cfg.url is None:
        raise PushError("pushgateway.url is not set")
    try:
        if delete:
            delete_from_gateway(cfg.url, cfg.job, grouping_key(cfg),
                                timeout=cfg.timeout_seconds, handler=_handler(cfg))
        else:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(SnapshotCollector(lambda: snapshot, cursor))
            push_to_gateway(cfg.url, cfg.job, registry, grouping_key(cfg),
                            timeout=cfg.timeout_seconds, handler=_handler(cfg))
    except Exception as e:
        verb = "delete from" if delete else "push to"
        reason = _describe(e, cfg.timeout_seconds)
        raise PushError(f"cannot {verb} {cfg.url}: {reason}", reason) from e


class PushgatewaySink(Periodic):
    """Pushes the latest snapshot every `interval` seconds; close() pushes the final
    totals (or deletes the group when `delete_on_exit`)."""

    cursor = "pushgateway"

    def __init__(self, cfg: PushgatewayConfig, latest: Callable[[], Snapshot],
                 interval: float) -> None:
        super().__init__("pushgateway", cfg.interval_seconds or interval)
        self.cfg = cfg
        self.latest = latest
        self.outage = Outage(log, f"push to {cfg.url}", self.interval)
        self.delivered = False  # whether the last push (or the delete at close) arrived

    def start(self) -> None:
        super().start()
        labels = ", ".join(f"{k}={v}" for k, v in
                           {"job": self.cfg.job, **grouping_key(self.cfg)}.items())
        log.info("pushing to %s every %gs as {%s}", self.cfg.url, self.interval, labels)

    def tick(self) -> None:
        self.push()

    def push(self) -> bool:
        try:
            push_snapshot(self.cfg, self.latest(), cursor=self.cursor)
        except PushError as e:
            self.outage.failed(e.reason)
            return False
        self.outage.succeeded()
        return True

    def final(self) -> None:
        delete = self.cfg.delete_on_exit
        try:
            push_snapshot(self.cfg, self.latest(), delete=delete, cursor=self.cursor)
        except PushError as e:
            log.warning("at exit: %s", e)
            self.delivered = False
            return
        log.info("%s the Pushgateway group at exit", "deleted" if delete else "pushed the "
                 "final totals to")
        self.delivered = True

    def close(self, timeout: float | None = None) -> None:
        super().close(self.cfg.timeout_seconds + 1 if timeout is None else timeout)
