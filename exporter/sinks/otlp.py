"""OTLP export: the sampler's snapshots as OpenTelemetry metrics, pushed to a collector.

Imported only when OTLP is enabled: opentelemetry, protobuf and grpc cost start-up time
and memory that a Prometheus-only exporter must not pay.

Observable instruments read the same immutable snapshot as /metrics, so OTLP and
Prometheus agree to the last digit. Collections are paced by the sampler (a
`carbonmeter.periodic.Periodic`: the SDK reader's own timer thread is off) and run on this
sink's worker, so a collector that is down or slow delays nothing else.
The SDK exporter retries within `timeout_seconds` and logs every attempt; those lines
are held back, and one line says when the collector went away (with the SDK's reason)
and one when it came back. With cumulative temporality (the default) nothing is lost
in between: the next export carries the whole total.

Names follow the OpenTelemetry hardware semantic conventions (hw.energy, hw.power,
hw.host.*, with hw.id, hw.type, hw.name, hw.parent); carbon has no convention yet and lives
under carbonmeter.*. The conventions' MUST: a host's overall energy is reported as
hw.host.energy and hw.host.power only, never as hw.energy, so nothing overlapping is summed;
a whole-host meter (IPMI, Redfish, an ACPI power meter) is therefore hw.host.* alone, and
the components stay hw.energy beside it. hw.type takes only the conventions' enumeration.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import socket
import threading
import typing
from collections.abc import Callable, Iterable
from pathlib import Path

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource

from carbonmeter.config import OtlpConfig
from carbonmeter.periodic import Periodic
from carbonmeter.probes.base import HOST, Device, relative_error
from carbonmeter.sinks.outage import Outage
from carbonmeter.snapshot import DeviceTotal, Snapshot
from carbonmeter.version import version

if typing.TYPE_CHECKING:
    from carbonmeter.attribution.view import WorkloadRow

log = logging.getLogger(__name__)

# carbonmeter's device kinds as values of the semantic conventions' hw.type enumeration. A
# platform (RAPL psys) zone covers the SoC and more of the board, and `other` is a box of its
# own (a declared switch) or a part with no type there (the Apple Neural Engine): enclosure.
HW_TYPES = {"cpu": "cpu", "dram": "memory", "ram": "memory", "gpu": "gpu",
            "platform": "enclosure", "other": "enclosure"}
# Resource attributes from environment variables that a pod spec sets from the
# Kubernetes downward API (fieldRef metadata.name, metadata.namespace, spec.nodeName).
K8S_ENV = {"k8s.pod.name": ("K8S_POD_NAME", "POD_NAME"),
           "k8s.namespace.name": ("K8S_NAMESPACE_NAME", "POD_NAMESPACE"),
           "k8s.node.name": ("K8S_NODE_NAME", "NODE_NAME")}
HOST_ID = "host"  # hw.id of the hw.host.* series


def resource(env: typing.Mapping[str, str] | None = None) -> Resource:
    """service.*, host.name and Kubernetes names; OTEL_RESOURCE_ATTRIBUTES and
    OTEL_SERVICE_NAME, which the user set on purpose, win over what is detected here."""
    env = os.environ if env is None else env
    attrs = {"service.name": "carbonmeter", "service.version": version(),
             "host.name": socket.gethostname()}
    for key, names in K8S_ENV.items():
        value = next((env[n] for n in names if env.get(n)), None)
        if value:
            attrs[key] = value
    return Resource.create(attrs).merge(OTELResourceDetector().detect())


def hw_type(kind: str) -> str:
    return HW_TYPES.get(kind, "enclosure")


def hw_id(d: Device) -> str:
    return d.uid or d.id


def device_attributes(d: Device, parent: Device | None = None) -> dict[str, str]:
    out = {"hw.id": hw_id(d), "hw.type": hw_type(d.kind), "hw.name": d.name or d.id,
           # the Prometheus labels, to join the two
           "carbonmeter.device": d.id, "carbonmeter.source": d.source}
    if parent is not None:
        out["hw.parent"] = hw_id(parent)
    return out


def host_name(res: Resource) -> str:
    """The physical host's name for hw.host.*: the resource's host.name, which
    OTEL_RESOURCE_ATTRIBUTES sets (a pod's manifest gives it the node's name)."""
    return str(res.attributes.get("host.name") or socket.gethostname())


class _HeldLogs(logging.Handler):
    """Holds what the SDK exporter logs while this sink's export runs on the current
    thread (a line per retry); anything logged elsewhere goes on to the usual handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        held = getattr(self.local, "held", None)
        if held is not None:
            held.append(record)
        else:
            logging.getLogger().handle(record)

    def __enter__(self) -> list[logging.LogRecord]:
        self.local.held = []
        return self.local.held

    def __exit__(self, *exc: object) -> None:
        self.local.held = None


def _reason(held: list[logging.LogRecord], transport: Exception | None) -> str:
    """Why an export failed: the SDK's final error, and the error underneath it (from
    the SDK's last retry line, or the HTTP transport, which the SDK does not log)."""
    errors = [r for r in held if r.levelno >= logging.ERROR]
    retries = [r for r in held if r.levelno == logging.WARNING]
    lines = [r.getMessage().splitlines()[0] for r in (errors[-1:] + retries[-1:])]
    if transport is not None and not retries:
        inner = getattr(transport.args[0], "reason", None) if transport.args else None
        lines.append(str(inner or transport))
    return "; ".join(line[:300] for line in lines) or "the export failed"


def _http_session() -> typing.Any:
    """A requests session for the HTTP exporter that keeps an explicit CA file: requests
    lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE replace it (psf/requests#3829); and that
    remembers the last transport error, which the SDK does not log."""
    import requests

    class Session(requests.Session):
        last_error: Exception | None = None

        def merge_environment_settings(self, *args: typing.Any) -> dict[str, typing.Any]:
            settings = super().merge_environment_settings(*args)
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

        def send(self, request: typing.Any, **kwargs: typing.Any) -> typing.Any:
            try:
                return super().send(request, **kwargs)
            except Exception as e:
                self.last_error = e
                raise

    return Session()


class _OutageLogged(MetricExporter):
    """The SDK exporter, its failures logged as outages instead of per attempt."""

    def __init__(self, inner: MetricExporter, outage: Outage, held: _HeldLogs,
                 session: typing.Any = None) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner, self.outage, self.held, self.session = inner, outage, held, session
        self.delivered = False  # whether the last export reached the collector

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: typing.Any) -> MetricExportResult:
        if self.session is not None:
            self.session.last_error = None
        with self.held as lines:
            try:
                result = self.inner.export(metrics_data, timeout_millis=timeout_millis,
                                           **kwargs)
                reason = _reason(lines, getattr(self.session, "last_error", None))
            except Exception as e:  # an exporter bug must not end the export thread
                result, reason = MetricExportResult.FAILURE, f"{type(e).__name__}: {e}"
        self.delivered = result is MetricExportResult.SUCCESS
        if self.delivered:
            self.outage.succeeded()
        else:
            self.outage.failed(reason)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: typing.Any) -> None:
        with self.held:
            self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def _sdk_exporter(cfg: OtlpConfig, session: typing.Any = None,
                  transport: typing.Any = None) -> MetricExporter:
    # Explicit, so the SDK's own reading of OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
    # cannot contradict the resolved configuration. Gauges have no temporality.
    temporality = {ObservableCounter: AggregationTemporality.DELTA
                   if cfg.temporality == "delta" else AggregationTemporality.CUMULATIVE}
    headers = cfg.headers or None
    if cfg.protocol == "grpc":
        # gRPC's C core logs connection events (a collector's GOAWAY, ...) to stderr
        # itself; failures reach the log through the exporter. Read when grpc loads.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        credentials = None
        if not cfg.insecure and (cfg.certificate or cfg.client_certificate):
            import grpc

            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(cfg.certificate), private_key=_read(cfg.client_key),
                certificate_chain=_read(cfg.client_certificate))
        return OTLPMetricExporter(endpoint=cfg.endpoint, insecure=cfg.insecure,
                                  credentials=credentials,
                                  # gRPC refuses metadata keys with capitals
                                  headers={k.lower(): v for k, v in (headers or {}).items()}
                                  or None,
                                  timeout=cfg.timeout_seconds,
                                  preferred_temporality=temporality)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    if transport is not None:
        return HttpExporter(endpoint=cfg.endpoint, headers=headers, timeout=cfg.timeout_seconds,
                            preferred_temporality=temporality, _transport=transport)
    return HttpExporter(endpoint=cfg.endpoint, certificate_file=cfg.certificate,
                        client_certificate_file=cfg.client_certificate,
                        client_key_file=cfg.client_key, headers=headers, session=session,
                        timeout=cfg.timeout_seconds, preferred_temporality=temporality)


def _http_client(cfg: OtlpConfig) -> tuple[typing.Any, typing.Any]:
    """(session, transport), one of them None, which sends OTLP/HTTP and remembers its last
    error: http.client where the SDK takes a transport and no proxy applies
    (carbonmeter.sinks.otlp_http), else a requests session."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpExporter,
    )

    if "_transport" in inspect.signature(HttpExporter.__init__).parameters:
        from carbonmeter.sinks import otlp_http

        if otlp_http.direct(cfg.endpoint):
            cert = cfg.client_certificate
            return None, otlp_http.Transport(
                verify=cfg.certificate or True,
                cert=(cert, cfg.client_key) if cert and cfg.client_key else cert)
    return _http_session(), None


class OtlpSink(Periodic):
    """Exports every `cfg.interval_seconds` from start() until close(), which exports once
    more; `delivered` says whether that last export arrived."""

    cursor = "otlp"

    def __init__(self, cfg: OtlpConfig, latest: Callable[[], Snapshot]) -> None:
        super().__init__("otlp", cfg.interval_seconds)
        self.cfg = cfg
        self.what = f"OTLP export to {cfg.endpoint} ({cfg.protocol})"
        self.held = _HeldLogs()
        sdk_logs = logging.getLogger("opentelemetry.exporter")
        sdk_logs.addHandler(self.held)
        sdk_logs.propagate = False
        self.outage = Outage(log, self.what, cfg.interval_seconds)
        session, transport = (_http_client(cfg) if cfg.protocol == "http/protobuf"
                              else (None, None))
        self.exporter = _OutageLogged(_sdk_exporter(cfg, session, transport), self.outage,
                                      self.held, session or transport)
        self._latest = latest
        self._pinned: Snapshot | None = None
        self._attrs: dict[tuple[Device, Device | None], dict[str, str]] = {}
        self.resource = resource()
        self._host = {"hw.id": HOST_ID, "hw.name": host_name(self.resource)}
        self.provider: MeterProvider | None = None

    def start(self) -> None:
        sink, cfg = self, self.cfg

        class Reader(PeriodicExportingMetricReader):
            def collect(self, timeout_millis: float = 10_000) -> None:
                # one snapshot for every instrument of this collection, as one scrape
                sink._pinned = sink._latest()
                try:
                    super().collect(timeout_millis=timeout_millis)
                finally:
                    sink._pinned = None

        # an infinite interval: the reader starts no thread; tick() collects
        self.reader = Reader(self.exporter, export_interval_millis=math.inf,
                             export_timeout_millis=cfg.timeout_seconds * 1000)
        self.provider = MeterProvider(metric_readers=[self.reader], resource=self.resource,
                                      shutdown_on_exit=False)
        self._instruments(self.provider)
        super().start()
        log.info("%s every %gs, %s temporality", self.what, cfg.interval_seconds,
                 cfg.temporality)

    def tick(self) -> None:
        self.reader.collect(timeout_millis=self.cfg.timeout_seconds * 1000)

    def _snapshot(self) -> Snapshot:
        return self._pinned if self._pinned is not None else self._latest()

    def _components(self) -> list[tuple[DeviceTotal, dict[str, str]]]:
        """Each device but a whole-host meter (that is hw.host.* only), with its attributes;
        hw.parent where the device it sits in is exported too."""
        totals = self._snapshot().devices
        by_id = {t.device.id: t.device for t in totals}
        return [(t, self._attributes(t.device, by_id)) for t in totals
                if t.device.scope != HOST]

    def _attributes(self, d: Device, by_id: dict[str, Device]) -> dict[str, str]:
        """A device's attributes, made once; a whole-host meter's are the host's."""
        if d.scope == HOST:
            return self._host
        key = (d, by_id.get(d.parent) if d.parent else None)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = self._attrs[key] = device_attributes(*key)
        return attrs

    def _instruments(self, provider: MeterProvider) -> None:
        meter = provider.get_meter("carbonmeter", version())

        def energy(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(t.energy_j, a) for t, a in self._components()]

        def power(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(t.power_w, a) for t, a in self._components()
                    if t.power_w is not None]

        def emissions(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(t.emissions_g, a) for t, a in self._components()]

        def estimate_error(_: CallbackOptions) -> Iterable[Observation]:
            totals = self._snapshot().devices
            by_id = {t.device.id: t.device for t in totals}
            return [Observation(e, self._attributes(t.device, by_id)) for t in totals
                    if (e := relative_error(t.device, t.power_w)) is not None]

        def host_energy(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(self._snapshot().host_energy_j, self._host)]

        def host_estimated(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(self._snapshot().host_estimated_energy_j, self._host)]

        def host_emissions(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(self._snapshot().host_emissions_g, self._host)]

        def host_power(_: CallbackOptions) -> Iterable[Observation]:
            watts = self._snapshot().host_power_w
            return [] if watts is None else [Observation(watts, self._host)]

        def intensity(_: CallbackOptions) -> Iterable[Observation]:
            i = self._snapshot().intensity
            return [Observation(i.g_per_kwh, {"carbonmeter.region": i.region,
                                              "carbonmeter.provider": i.provider})]

        def workloads(value: Callable[[WorkloadRow], float | None],
                      ack: bool = False) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def observe(_: CallbackOptions) -> Iterable[Observation]:
                view = self._snapshot().attribution
                if view is None:
                    return []
                out = [Observation(v, {**view.otel_attributes(r), "hw.type": hw_type(r.kind)})
                       for r in view.rows if (v := value(r)) is not None]
                if ack:  # ended workloads' final values are out: they may now be dropped
                    view.exported(self.cursor)
                return out
            return observe

        def embodied(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(e.grams, {"carbonmeter.device": e.device})
                    for e in self._snapshot().embodied]

        counter, gauge = meter.create_observable_counter, meter.create_observable_gauge
        for create, name, callback, unit, description in (
            (counter, "carbonmeter.workload.energy", workloads(lambda r: r.energy_j), "J",
             "Energy attributed to a workload (pod, container, process) on one kind of "
             "device; with the unattributed rows it adds up to the host's energy."),
            (gauge, "carbonmeter.workload.power", workloads(lambda r: r.power_w), "W",
             "Power attributed to a workload over the last sampling interval."),
            (counter, "carbonmeter.workload.emissions",
             workloads(lambda r: r.emissions_g, ack=True), "g",
             "CO2-equivalent of a workload's attributed energy, PUE applied."),
            (counter, "carbonmeter.embodied_emissions", embodied, "g", "Embodied CO2-"
             "equivalent of the hardware, accrued per second of the exporter's runtime."),
            (counter, "hw.energy", energy, "J",
             "Energy consumed by the component since carbonmeter started measuring it."),
            (gauge, "hw.power", power, "W",
             "Mean power of the component over the last sampling interval."),
            (counter, "hw.host.energy", host_energy, "J", "Energy of the whole host: its "
             "whole-host meter (a BMC, an ACPI power meter) where one runs, plus devices "
             "beside it; else the sum of its components, measured and estimated, which never "
             "overlap (carbonmeter.host.estimated_energy is the estimated part)."),
            (gauge, "hw.host.power", host_power, "W",
             "Mean power of the whole host over the last sampling interval."),
            (counter, "carbonmeter.host.estimated_energy", host_estimated, "J",
             "The part of hw.host.energy that models estimated, not sensors."),
            (counter, "carbonmeter.host.emissions", host_emissions, "g", "CO2-equivalent of "
             "the host's energy (hw.host.energy), PUE applied."),
            (counter, "carbonmeter.emissions", emissions, "g", "CO2-equivalent emitted for "
             "the component's energy, PUE applied, at each interval's intensity."),
            (gauge, "carbonmeter.carbon_intensity", intensity, "g/kWh",
             "Carbon intensity of the grid in use, gCO2eq/kWh."),
            (gauge, "carbonmeter.estimate.relative_error", estimate_error, "1",
             "Expected relative error of an estimated component's power at its last reading, "
             "from the model's error on measured servers; measured components have none."),
        ):
            create(name, [callback], unit=unit, description=description)

    @property
    def delivered(self) -> bool:
        return self.exporter.delivered

    def close(self, timeout: float | None = None) -> None:
        """Export the latest totals once more and stop."""
        super().close(self.cfg.timeout_seconds + 1 if timeout is None else timeout)

    def final(self) -> None:
        if self.provider is not None:
            try:
                self.tick()
            except Exception as e:  # the exporter's own failures are outages, said above
                log.warning("%s: the final collection failed: %s", self.what, e)
            self.provider.shutdown(timeout_millis=self.cfg.timeout_seconds * 1000 + 1000)
            if not self.exporter.delivered:
                log.warning("%s: the final export did not arrive; the collector keeps the "
                            "totals of the last export that did", self.what)
        sdk_logs = logging.getLogger("opentelemetry.exporter")
        sdk_logs.removeHandler(self.held)
        sdk_logs.propagate = True
