"""OTLP export, received by a collector-like receiver on both transports.

`carbonmeter serve` runs as a subprocess on a fixture powercap tree (two sockets with DRAM,
the kernel's counter semantics) and a fake NVML (a GPU with its UUID), exactly as on such a
server; tests/otlp_receiver.py decodes what arrives with the official opentelemetry-proto
classes. A few tests drive the sink in-process on hand-made snapshots, where exact values
over several exports matter (delta temporality) or a TLS receiver is needed.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbonmeter import __version__, config
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import Device
from carbonmeter.snapshot import DeviceTotal, ProbeStatus, Snapshot
from tests.fakes.fake_nvml import FakeGpu, write_state
from tests.fixtures.powercap import FAST_FORWARD_UW, two_sockets_with_dram
from tests.helpers import http_get, self_signed, wait_for
from tests.otlp_receiver import Receiver
from tests.test_end_to_end import ROOT, SHIM, metrics, start_serve, stop

PROTOCOLS = ["grpc", "http/protobuf"]
GRPC = re.compile(r"\|\s+grpc$", re.M)  # `-X importtime` line of the grpc package
CUMULATIVE, DELTA = 2, 1  # opentelemetry.proto.metrics.v1.AggregationTemporality
GPU_UUID = "GPU-5b0d3f3c-1c1e-4a6e-9d2b-0a1b2c3d4e5f"
DEVICE_METRICS = {"hw.energy": "carbonmeter_energy_joules",
                  "hw.power": "carbonmeter_power_watts",
                  "carbonmeter.emissions": "carbonmeter_emissions_grams"}


def prometheus_values(target: str) -> dict[tuple[str, str], float]:
    """(family, device or "") -> value, from the exporter's own /metrics."""
    out = {}
    for fam in text_string_to_metric_families(metrics(target)):
        for s in fam.samples:
            if s.name.endswith("_created"):
                continue
            out[(fam.name, s.labels.get("device", ""))] = s.value
    return out


def serve_with_otlp(tmp: Path, receiver: Receiver, extra: str = "", *,
                    env: dict[str, str] | None = None, interval: float = 0.2):
    tree = two_sockets_with_dram(tmp / "sys", max_power_uw=FAST_FORWARD_UW)
    state = write_state(tmp / "nvml.json", [
        FakeGpu("NVIDIA A100-SXM4-40GB", GPU_UUID, power_mw=0, energy_counter=True)])
    proc, target = start_serve(tmp, f"""
paths: {{sysfs: {tmp / 'sys'}}}
probes: {{disabled: [platform_model]}}
carbon: {{region: FR, pue: 1.2}}
otlp:
  endpoint: {receiver.endpoint}
  protocol: {receiver.protocol}
  interval_seconds: {interval}
  timeout_seconds: 0.5
{extra}""", env={"PYTHONPATH": f"{SHIM}:{ROOT}", "FAKE_NVML_STATE": str(state),
                 **(env or {})}, interval=0.1)
    return tree, proc, target


def export_after(receiver: Receiver, when: float, what: str = "an export"):
    """The first export the receiver got after monotonic time `when`."""
    def find():
        return next((r for r in receiver.requests() if r.at > when), None)
    return wait_for(find, timeout=15, what=what)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_serve_exports_hardware_conventions_that_match_prometheus(tmp_path, protocol):
    with Receiver(protocol) as receiver:
        tree, proc, target = serve_with_otlp(
            tmp_path, receiver, "  headers: {Authorization: Bearer s3cret}\n",
            env={"K8S_POD_NAME": "carbonmeter-x7k2p", "K8S_NAMESPACE_NAME": "monitoring",
                 "NODE_NAME": "node-7",
                 "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=test,team=green"})
        try:
            wait_for(lambda: receiver.last("hw.energy", **{"hw.id": "dram-1"}),
                     what="a first export with every device")
            for zone, joules in (("intel-rapl:0", 1234.5), ("intel-rapl:1", 20.25),
                                 ("intel-rapl:0:0", 7.0)):
                tree.advance(zone, joules)
            time.sleep(0.5)  # sampled (every 0.1 s); nothing changes from here on
            frozen = time.monotonic()
            last = export_after(receiver, frozen + 0.3, "an export of the frozen totals")
            prom = prometheus_values(target)
        finally:
            assert stop(proc) == 0, (tmp_path / "serve.log").read_text()

    points = last.points()
    by_name = {}
    for p in points:
        by_name.setdefault(p.metric, []).append(p)
    assert set(by_name) == {"hw.energy", "hw.power", "hw.host.energy", "hw.host.power",
                            "carbonmeter.host.estimated_energy", "carbonmeter.host.emissions",
                            "carbonmeter.emissions", "carbonmeter.carbon_intensity"}
    expected = {"hw.energy": ("J", "sum"), "hw.power": ("W", "gauge"),
                "hw.host.energy": ("J", "sum"), "hw.host.power": ("W", "gauge"),
                "carbonmeter.host.estimated_energy": ("J", "sum"),
                "carbonmeter.host.emissions": ("g", "sum"),
                "carbonmeter.emissions": ("g", "sum"),
                "carbonmeter.carbon_intensity": ("g/kWh", "gauge")}
    for p in points:
        assert (p.unit, p.kind) == expected[p.metric], p
        if p.kind == "sum":
            assert p.monotonic is True and p.temporality == CUMULATIVE, p

    # Semantic-convention attributes; a GPU's hw.id is its UUID, stable across hosts.
    energy = {p.attributes["carbonmeter.device"]: p for p in by_name["hw.energy"]}
    assert set(energy) == {"package-0", "package-1", "dram-0", "dram-1", "gpu-0"}
    assert energy["package-0"].attributes["hw.id"] == "package-0"
    assert energy["package-0"].attributes["hw.type"] == "cpu"
    assert energy["dram-1"].attributes["hw.type"] == "memory"
    assert energy["gpu-0"].attributes == {
        "hw.id": GPU_UUID, "hw.type": "gpu", "hw.name": "NVIDIA A100-SXM4-40GB",
        "carbonmeter.device": "gpu-0", "carbonmeter.source": "nvml"}
    assert by_name["hw.host.energy"][0].attributes["hw.id"] == "host"
    intensity = by_name["carbonmeter.carbon_intensity"][0]
    assert intensity.attributes == {"carbonmeter.region": "FR",
                                    "carbonmeter.provider": "bundled"}

    # The same snapshot as /metrics: equal to the last digit.
    for otel, prom_name in DEVICE_METRICS.items():
        for p in by_name[otel]:
            assert p.value == prom[(prom_name, p.attributes["carbonmeter.device"])], otel
    assert energy["package-0"].value == pytest.approx(1234.5, abs=1e-3)
    assert by_name["hw.host.energy"][0].value == prom[("carbonmeter_host_energy_joules", "")]
    for otel, prom_name in (("carbonmeter.host.estimated_energy",
                             "carbonmeter_host_estimated_energy_joules"),
                            ("carbonmeter.host.emissions", "carbonmeter_host_emissions_grams")):
        assert by_name[otel][0].value == prom[(prom_name, "")], otel
    assert intensity.value == prom[("carbonmeter_carbon_intensity_grams_per_kilowatt_hour", "")]

    resource = points[0].resource
    assert resource["service.name"] == "carbonmeter"
    assert resource["service.version"] == __version__
    assert resource["host.name"] == socket.gethostname()
    assert resource["k8s.pod.name"] == "carbonmeter-x7k2p"
    assert resource["k8s.namespace.name"] == "monitoring"
    assert resource["k8s.node.name"] == "node-7"
    assert resource["deployment.environment.name"] == "test" and resource["team"] == "green"
    assert last.headers["authorization"] == "Bearer s3cret"

    # Every export of a counter series is >= the previous one, in one cumulative stream.
    series: dict[tuple[str, str], list] = {}
    for r in receiver.requests():
        for p in r.points():
            if p.kind == "sum":
                series.setdefault((p.metric, p.attributes["hw.id"]), []).append(p)
    for key, pts in series.items():
        values = [p.value for p in pts]
        assert values == sorted(values), key
        assert len({p.start_ns for p in pts}) == 1, key


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_collector_outage_loses_no_energy_and_is_logged_once(tmp_path, protocol):
    receiver = Receiver(protocol).start()
    tree, proc, target = serve_with_otlp(tmp_path, receiver)
    log = tmp_path / "serve.log"
    try:
        wait_for(lambda: receiver.last("hw.energy", **{"hw.id": "package-0"}),
                 what="a first export")
        receiver.stop()
        down = time.monotonic()
        tree.advance("intel-rapl:0", 5000)  # spent while the collector is away
        wait_for(lambda: "failing" in log.read_text(), what="the outage logged")
        time.sleep(1.5)  # several more exports fail meanwhile
        before = prometheus_values(target)[("carbonmeter_energy_joules", "package-0")]
        receiver.start()
        back = export_after(receiver, down, "an export after the collector came back")
        wait_for(lambda: "recovered" in log.read_text(), what="the recovery logged")
    finally:
        assert stop(proc) == 0
        receiver.stop()

    # Cumulative: the first export after the outage carries the whole total, 5 kJ included,
    # in the same stream (same start time) as before the outage.
    first = receiver.requests()[0]
    pkg = next(p for p in back.points() if p.metric == "hw.energy"
               and p.attributes["hw.id"] == "package-0")
    assert pkg.value == before
    assert pkg.value == pytest.approx(5000, abs=1e-3)
    start = next(p for p in first.points() if p.metric == "hw.energy"
                 and p.attributes["hw.id"] == "package-0").start_ns
    assert pkg.start_ns == start

    text = log.read_text()
    failing = [ln for ln in text.splitlines() if "failing" in ln]
    recovered = [ln for ln in text.splitlines() if "recovered" in ln]
    assert len(failing) == 1 and len(recovered) == 1, text
    assert receiver.endpoint in failing[0]
    # The SDK's per-attempt lines are held back; its reason is inside the one line.
    assert text.count("Failed to export") <= 1 and "Transient error" not in text.replace(
        failing[0], ""), text
    assert "Traceback" not in text


def test_slow_collector_never_delays_metrics_and_stop_is_bounded(tmp_path):
    """A collector that accepts the connection but answers after 3 s (past the 0.5 s
    timeout): scrapes stay fast, and SIGTERM still stops the exporter promptly."""
    with Receiver("http/protobuf", delay=3.0) as receiver:
        _, proc, target = serve_with_otlp(tmp_path, receiver, interval=0.1)
        try:
            wait_for(lambda: 'device="dram-1"' in metrics(target), what="first sample")
            wait_for(lambda: "failing" in (tmp_path / "serve.log").read_text(),
                     what="timed-out exports")
            worst = 0.0
            for _ in range(20):
                t = time.perf_counter()
                assert http_get(f"http://{target}/metrics")[0] == 200
                worst = max(worst, time.perf_counter() - t)
                time.sleep(0.05)
            assert worst < 1.0, worst  # the export hangs 3 s meanwhile
        finally:
            t = time.monotonic()
            assert stop(proc) == 0
            assert time.monotonic() - t < 5
    assert "final export did not arrive" in (tmp_path / "serve.log").read_text()


def test_sigterm_sends_a_final_export(tmp_path):
    """With an interval far longer than the run, only the export at stop can arrive."""
    with Receiver("grpc") as receiver:
        tree, proc, target = serve_with_otlp(tmp_path, receiver, interval=600)
        wait_for(lambda: 'device="dram-1"' in metrics(target), what="first sample")
        tree.advance("intel-rapl:1", 42)
        time.sleep(0.4)
        prom = prometheus_values(target)
        assert receiver.requests() == []
        assert stop(proc) == 0
        assert len(receiver.requests()) == 1
    pkg = receiver.last("hw.energy", **{"hw.id": "package-1"})
    assert pkg.value == prom[("carbonmeter_energy_joules", "package-1")]
    assert pkg.value == pytest.approx(42, abs=1e-3)


def test_opentelemetry_is_imported_only_when_otlp_is_on(tmp_path):
    """Start-up time and memory: a Prometheus-only exporter never loads opentelemetry or
    grpc; OTLP over HTTP loads opentelemetry but not grpc."""
    def imported(env: dict[str, str]) -> str:
        out = subprocess.run(
            [sys.executable, "-X", "importtime", "-c",
             "from carbonmeter import app, config\n"
             "a = app.build(config.load())\n"
             "a.start()\n"
             "a.stop()\n"],
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                 "CARBONMETER_SERVER_LISTEN": "127.0.0.1:0", "CARBONMETER_STATE_PATH": "",
                 "CARBONMETER_SAMPLER_INTERVAL_SECONDS": "0.1", **env},
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stderr

    off = imported({})
    assert "opentelemetry" not in off and not GRPC.search(off) and "google.protobuf" not in off
    with Receiver("http/protobuf") as receiver:
        on = imported({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.endpoint})
    assert "opentelemetry.sdk.metrics" in on and not GRPC.search(on)


# -- in-process: the sink on hand-made snapshots ------------------------------------------

CPU = Device("package-0", "cpu", "rapl", name="Intel Xeon Gold 6338")


def snapshot(seq: int, joules: float) -> Snapshot:
    total = DeviceTotal(CPU, joules, joules / 3.6e6 * 56, 100.0)
    return Snapshot(seq, time.time(), (total,), joules, 100.0, total.emissions_g,
                    Intensity(56, "FR", "bundled", "test"), 1.0,
                    (ProbeStatus("rapl", True, 0),))


def otlp_config(endpoint: str, protocol: str, **keys: object):
    lines = "".join(f"  {k}: {v}\n" for k, v in keys.items())
    path = Path(f"/tmp/carbonmeter-otlp-{time.monotonic_ns()}.yaml")
    path.write_text(f"otlp:\n  endpoint: {endpoint}\n  protocol: {protocol}\n"
                    f"  interval_seconds: 3600\n  timeout_seconds: 1\n{lines}")
    try:
        return config.load(path, env={}).otlp
    finally:
        path.unlink()


def test_delta_temporality_sends_increases_that_add_up_to_the_total():
    from carbonmeter.sinks.otlp import OtlpSink

    current = [snapshot(1, 100.0)]
    with Receiver("http/protobuf") as receiver:
        sink = OtlpSink(otlp_config(receiver.endpoint, "http/protobuf", temporality="delta"),
                        lambda: current[0])
        sink.start()
        for seq, joules in ((2, 250.0), (3, 250.0), (4, 1000.0)):
            sink.reader.collect()
            current[0] = snapshot(seq, joules)
        sink.close()  # the final export: 1000
        assert sink.delivered
    energy = [p for r in receiver.requests() for p in r.points() if p.metric == "hw.energy"]
    assert [p.temporality for p in energy] == [DELTA] * 4
    assert [p.value for p in energy] == [100.0, 150.0, 0.0, 750.0]
    assert sum(p.value for p in energy) == 1000.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tls_with_a_private_ca(tmp_path, protocol, caplog):
    """The collector's certificate is verified against otlp.certificate; without it the
    same collector is refused (one outage line says why)."""
    from carbonmeter.sinks.otlp import OtlpSink

    cert, key = self_signed(tmp_path)
    with Receiver(protocol, tls=(str(cert), str(key))) as receiver:
        assert receiver.endpoint.startswith("https://")
        sink = OtlpSink(otlp_config(receiver.endpoint, protocol, certificate=cert),
                        lambda: snapshot(1, 5.0))
        sink.start()
        sink.close()
        assert sink.delivered
        assert receiver.last("hw.energy").value == 5.0

        with caplog.at_level(logging.WARNING, logger="carbonmeter.sinks.otlp"):
            sink = OtlpSink(otlp_config(receiver.endpoint, protocol), lambda: snapshot(1, 5.0))
            sink.start()
            sink.close()
            assert not sink.delivered
        assert len(receiver.requests()) == 1
    failing = [r.getMessage() for r in caplog.records if "failing" in r.getMessage()]
    assert len(failing) == 1, caplog.text


def test_workloads_and_embodied_carbon_go_over_otlp_too():
    """The attribution rows of the snapshot, with the Kubernetes semantic-convention
    attributes, and the embodied emissions: the same values /metrics shows."""
    from carbonmeter.attribution.view import AttributionView, WorkloadRow
    from carbonmeter.sinks.otlp import OtlpSink
    from carbonmeter.snapshot import EmbodiedTotal

    acked = []
    rows = (WorkloadRow("pod", ("shop", "cart-7d9f"), "cpu", 120.0, 0.0018, 4.5),
            WorkloadRow("unattributed", ("", ""), "cpu", 30.0, 0.00045, None))
    view = AttributionView("pod", "node", ("namespace", "pod"), rows, (), {}, 12, 0.001,
                           "test", ack=lambda reader, n: acked.append((reader, n)))
    snap = replace(snapshot(1, 150.0), attribution=view,
                   embodied=(EmbodiedTotal("host", 2.5),))
    with Receiver("http/protobuf") as receiver:
        sink = OtlpSink(otlp_config(receiver.endpoint, "http/protobuf"), lambda: snap)
        sink.start()
        sink.close()
        assert sink.delivered
    points = {(p.metric, p.attributes.get("k8s.pod.name", p.attributes.get(
        "carbonmeter.workload", p.attributes.get("carbonmeter.device")))): p
        for r in receiver.requests() for p in r.points()}
    cart = points["carbonmeter.workload.energy", "cart-7d9f"]
    assert (cart.value, cart.unit, cart.monotonic) == (120.0, "J", True)
    assert cart.attributes["k8s.namespace.name"] == "shop"
    assert cart.attributes["hw.type"] == "cpu"
    assert points["carbonmeter.workload.energy", "unattributed"].value == 30.0
    assert points["carbonmeter.workload.power", "cart-7d9f"].value == 4.5
    assert ("carbonmeter.workload.power", "unattributed") not in points  # ended: no power
    assert points["carbonmeter.workload.emissions", "cart-7d9f"].value == pytest.approx(0.0018)
    assert points["carbonmeter.embodied_emissions", "host"].value == 2.5
    assert acked == [("otlp", 12)]  # exported under its cursor: ended ones may be dropped
