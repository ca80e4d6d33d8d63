"""Prometheus exposition: a collector over the latest snapshot, and the HTTP endpoint.

The collector lives on its own CollectorRegistry, beside prometheus-client's process
collector (`process_*`: the exporter's own CPU time, memory and file descriptors, so its
cost is visible where it is scraped); nothing else registered anywhere in the process
sneaks in. Rendering happens at most once per snapshot and format: concurrent scrapes of
the same sample share the bytes, gzip included, and the process figures are those of the
first scrape of each sample.
"""

from __future__ import annotations

import gzip
import logging
import platform
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from carbonmeter.probes.base import relative_error
from carbonmeter.server.endpoint import make_server
from carbonmeter.snapshot import Snapshot
from carbonmeter.version import version

if TYPE_CHECKING:
    from carbonmeter.server.webconfig import WebConfig

log = logging.getLogger(__name__)

DEVICE_LABELS = ("device", "kind", "source")


class SnapshotCollector:
    """Builds fresh metric families from whatever snapshot `latest()` returns; what it
    renders of the workload rows is acknowledged under `cursor` (see carbonmeter.sinks)."""

    def __init__(self, latest: Callable[[], Snapshot], cursor: str | None = None) -> None:
        self.latest = latest
        self.cursor = cursor

    def describe(self) -> list[Metric]:
        return []  # families depend on the snapshot; nothing to pre-register

    def collect(self) -> Iterator[Metric]:
        s = self.latest()
        energy = CounterMetricFamily(
            "carbonmeter_energy_joules", "Energy spent by a device since the exporter first "
            "measured it (continued across restarts by the state file).", labels=DEVICE_LABELS,
            unit="joules")
        power = GaugeMetricFamily(
            "carbonmeter_power_watts", "Mean power of a device over the last sampling interval.",
            labels=DEVICE_LABELS, unit="watts")
        emissions = CounterMetricFamily(
            "carbonmeter_emissions_grams", "CO2-equivalent emitted for a device's energy, "
            "PUE applied, at the intensity of each interval.", labels=DEVICE_LABELS, unit="grams")
        unmeasured = CounterMetricFamily(
            "carbonmeter_unmeasured_seconds", "Time in which a device's energy could not be "
            "known (exporter down, stopped or suspended, probe failing) and was not counted.",
            labels=DEVICE_LABELS, unit="seconds")
        # what the device is, for joins: dcgm-exporter's UUID and modelName, Kepler's gpu_uuid
        info = InfoMetricFamily(
            "carbonmeter_device", "What a device is: its model and, where the hardware has "
            "one, its UUID (an NVIDIA GPU's), to join with other exporters.",
            labels=DEVICE_LABELS)
        error = GaugeMetricFamily(
            "carbonmeter_estimate_relative_error", "Expected relative error of an estimated "
            "device's power at its last reading (0.2: within 20 %), from the model's error on "
            "measured servers it was not fitted on; measured devices have none.",
            labels=DEVICE_LABELS, unit="ratio")
        for d in s.devices:
            labels = (d.device.id, d.device.kind, d.device.source)
            energy.add_metric(labels, d.energy_j)
            emissions.add_metric(labels, d.emissions_g)
            unmeasured.add_metric(labels, d.unmeasured_s)
            if d.power_w is not None:
                power.add_metric(labels, d.power_w)
            info.add_metric(labels, {"name": d.device.name, "uuid": d.device.uid})
            err = relative_error(d.device, d.power_w)
            if err is not None:
                error.add_metric(labels, err)
        yield from (energy, power, emissions, unmeasured, info)
        if error.samples:
            yield error
        yield CounterMetricFamily(
            "carbonmeter_host_energy_joules", "Energy of the host: the sum of its devices, or "
            "where a whole-host meter runs (IPMI, Redfish) that meter plus devices beside the "
            "host.", s.host_energy_j, unit="joules")
        yield CounterMetricFamily(
            "carbonmeter_host_estimated_energy_joules", "The part of the host's energy that "
            "models estimated (CPU and RAM estimates, declared devices), not sensors.",
            s.host_estimated_energy_j, unit="joules")
        if s.host_power_w is not None:
            yield GaugeMetricFamily("carbonmeter_host_power_watts", "Mean power of the host "
                                    "over the last interval.", s.host_power_w, unit="watts")
        yield CounterMetricFamily(
            "carbonmeter_host_emissions_grams", "CO2-equivalent of the host's energy, PUE "
            "applied.", s.host_emissions_g, unit="grams")
        intensity = GaugeMetricFamily(
            "carbonmeter_carbon_intensity_grams_per_kilowatt_hour", "Carbon intensity of the "
            "grid in use, gCO2eq/kWh.", labels=("region", "provider"))
        intensity.add_metric((s.intensity.region, s.intensity.provider), s.intensity.g_per_kwh)
        yield intensity
        if s.providers:
            yield from _provider_families(s)
        if s.embodied:
            embodied = CounterMetricFamily(
                "carbonmeter_embodied_emissions_grams", "Embodied CO2-equivalent of a piece of "
                "hardware, accrued per second of runtime over its lifetime.", labels=("device",),
                unit="grams")
            for e in s.embodied:
                embodied.add_metric((e.device,), e.grams)
            yield embodied
        yield GaugeMetricFamily("carbonmeter_pue_ratio", "Power usage effectiveness applied "
                                "to emissions.", s.pue)
        up = GaugeMetricFamily("carbonmeter_probe_up", "1 when the probe's last read "
                               "succeeded.", labels=("probe",))
        errors = CounterMetricFamily("carbonmeter_probe_errors", "Failed reads, per probe.",
                                     labels=("probe",))
        for p in s.probes:
            up.add_metric((p.name,), 1.0 if p.up else 0.0)
            errors.add_metric((p.name,), p.errors_total)
        yield from (up, errors)
        if s.attribution is not None:
            from carbonmeter.sinks.workloads import families

            yield from families(s.attribution)
            if self.cursor is not None:
                s.attribution.exported(self.cursor)
        info = InfoMetricFamily("carbonmeter_build", "carbonmeter version.")
        info.add_metric((), {"version": version(),
                             "python_version": platform.python_version()})
        yield info


def _provider_families(s: Snapshot) -> Iterator[Metric]:
    up = GaugeMetricFamily("carbonmeter_carbon_intensity_provider_up", "1 when the live "
                           "intensity provider's last fetch succeeded.", labels=("provider",))
    # when, not how long ago: a timestamp stays right however late it is scraped or queried
    when = GaugeMetricFamily(
        "carbonmeter_carbon_intensity_provider_timestamp_seconds", "Unix time of the "
        "provider's last good value: when it was fetched, or a file's modification time.",
        labels=("provider",), unit="seconds")
    value = GaugeMetricFamily(
        "carbonmeter_carbon_intensity_provider_grams_per_kilowatt_hour", "Last good value of "
        "each live provider, gCO2eq/kWh; signal is average or marginal (WattTime MOER).",
        labels=("provider", "region", "signal"))
    errors = CounterMetricFamily("carbonmeter_carbon_intensity_provider_errors", "Failed "
                                 "fetches, per live provider.", labels=("provider",))
    for p in s.providers:
        up.add_metric((p.name,), 1.0 if p.up else 0.0)
        errors.add_metric((p.name,), p.errors_total)
        if p.value is not None and p.value_unix is not None:
            when.add_metric((p.name,), p.value_unix)
            value.add_metric((p.name, p.value.region, p.value.signal), p.value.g_per_kwh)
    yield from (up, when, value, errors)


class Renderer:
    """Exposition bytes for one snapshot, cached per (snapshot, format, gzip)."""

    def __init__(self, latest: Callable[[], Snapshot], cursor: str | None = None) -> None:
        self.latest = latest
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(self._pinned, cursor))
        ProcessCollector(registry=self.registry)  # reads /proc/self; nothing where there is none
        self._pin: Snapshot | None = None
        self._cache: dict[tuple[int, str, bool], bytes] = {}
        self._lock = threading.Lock()

    def _pinned(self) -> Snapshot:
        return self._pin if self._pin is not None else self.latest()

    def render(self, accept: str | None, gzip_ok: bool) -> tuple[bytes, str]:
        snap = self.latest()
        encoder, content_type = choose_encoder(accept or "")
        key = (snap.seq, content_type, gzip_ok)
        body = self._cache.get(key)
        if body is not None:
            return body, content_type
        with self._lock:  # one renderer at a time; the others find its result
            body = self._cache.get(key)
            if body is None:
                plain_key = (snap.seq, content_type, False)
                plain = self._cache.get(plain_key)
                if plain is None:
                    self._pin = snap
                    try:
                        plain = encoder(self.registry)
                    finally:
                        self._pin = None
                body = gzip.compress(plain, compresslevel=6, mtime=0) if gzip_ok else plain
                self._cache = {k: v for k, v in self._cache.items() if k[0] == snap.seq}
                self._cache[plain_key] = plain
                self._cache[key] = body
        return body, content_type


class PrometheusSink:
    """/metrics, scraped: the HTTP endpoint (bound at construction, so a port in use stops
    the exporter before anything runs) serving the renderer's bytes."""

    name = "prometheus"
    cursor = "prometheus"

    def __init__(self, host: str, port: int, latest: Callable[[], Snapshot],
                 alive: Callable[[], bool], web: WebConfig | None = None, *,
                 healthz_auth: bool = False) -> None:
        self.renderer = Renderer(latest, self.cursor)
        self.server = make_server(host, port, self.renderer.render, alive, web,
                                  healthz_auth=healthz_auth)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self.server.serve_forever, name="http", daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
