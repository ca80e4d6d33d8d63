"""OTLP against the OpenTelemetry hardware semantic conventions' rules, checked on what a
receiver built on the official opentelemetry-proto classes decodes (tests/otlp_receiver.py).

The oracle is the conventions' own code: opentelemetry-semantic-conventions (a dependency of
the SDK) publishes the hw.type enumeration (HwTypeValues) and the metric names; its text of
hw.host.energy says "The overall energy usage of a host MUST be reported using the specific
hw.host.energy and hw.host.power metrics only, instead of the generic hw.energy and hw.power
[...] to prevent summing up overlapping values".

The whole-host meter is IPMI DCMI through a fake ipmitool (tests/fakes/fake_ipmitool.py,
ipmitool 1.8.19's output byte for byte) beside RAPL on a powercap fixture whose DRAM zones
are subzones of their packages, as the kernel nests them; `carbonmeter serve` runs them as
on such a server.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from opentelemetry.semconv._incubating.attributes.hw_attributes import HwTypeValues
from opentelemetry.semconv._incubating.metrics import hw_metrics

from carbonmeter import config
from carbonmeter.attribution.view import AttributionView, WorkloadRow
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import BESIDE, HOST, Device
from carbonmeter.snapshot import DeviceTotal, ProbeStatus, Snapshot
from tests.fixtures.powercap import two_sockets_with_dram
from tests.helpers import fake_executable, wait_for
from tests.otlp_receiver import Receiver
from tests.sinks.test_otlp import otlp_config
from tests.test_end_to_end import metrics, start_serve, stop

FAKES = Path(__file__).resolve().parents[1] / "fakes"
ENUM = {v.value for v in HwTypeValues}
HW_METRICS = {getattr(hw_metrics, n) for n in dir(hw_metrics) if n.startswith("HW_")}


def test_a_whole_host_meter_is_hw_host_only(tmp_path):
    two_sockets_with_dram(tmp_path / "sys")
    bin_dir = tmp_path / "bin"
    fake_executable(bin_dir, "ipmitool", FAKES / "fake_ipmitool.py")
    watts = tmp_path / "watts"
    watts.write_text("350")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "ipmi0").touch()  # the BMC's device node, as ipmi_devintf makes it
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_IPMITOOL_CASE": "ok",
           "FAKE_IPMITOOL_WATTS": str(watts), "CARBONMETER_PATHS_DEVFS": str(tmp_path / "dev"),
           "OTEL_RESOURCE_ATTRIBUTES": "host.name=node-7.example.net"}
    with Receiver("http/protobuf") as receiver:
        proc, target = start_serve(tmp_path, f"""
paths: {{sysfs: {tmp_path / 'sys'}}}
probes: {{disabled: [nvml]}}
otlp: {{endpoint: {receiver.endpoint}, interval_seconds: 0.2, timeout_seconds: 1}}
""", env=env, interval=0.1)
        try:
            wait_for(lambda: receiver.last("hw.host.power"), what="an export with host power")
            wait_for(lambda: receiver.last("hw.energy", **{"hw.id": "dram-1"}),
                     what="the components")
            assert 'device="server"' in metrics(target)  # on /metrics, as a breakdown row
        finally:
            assert stop(proc) == 0, (tmp_path / "serve.log").read_text()
        last = receiver.requests()[-1]
    points = last.points()
    energy = {p.attributes["hw.id"]: p for p in points if p.metric == "hw.energy"}
    # the MUST: the server's meter is not a hw.energy (nor hw.power) series ...
    assert set(energy) == {"package-0", "package-1", "dram-0", "dram-1"}
    assert not [p for p in points if p.metric in ("hw.energy", "hw.power")
                and p.attributes.get("carbonmeter.source") == "ipmi"]
    # ... it is hw.host.*, at the meter's 350 W, named after the physical host
    [host_power] = [p for p in points if p.metric == "hw.host.power"]
    assert host_power.value == pytest.approx(350.0)
    assert host_power.attributes == {"hw.id": "host", "hw.name": "node-7.example.net"}
    assert points[0].resource["host.name"] == "node-7.example.net"
    # every hw.type is a value of the enumeration; every hw.* name is a convention's
    assert {p.attributes["hw.type"] for p in points if "hw.type" in p.attributes} <= ENUM
    assert {p.metric for p in points if p.metric.startswith("hw.")} <= HW_METRICS
    # hw.parent: a DRAM zone sits in its package (the powercap subzone intel-rapl:N:0)
    assert energy["dram-1"].attributes["hw.parent"] == "package-1"
    assert "hw.parent" not in energy["package-1"].attributes


def _snapshot() -> Snapshot:
    """A host with a BMC meter, a package and its DRAM, the RAM estimate, a GPU and a
    declared switch beside the host; workload rows of every kind."""
    devices = (
        DeviceTotal(Device("server", "platform", "redfish", scope=HOST), 900.0, 0.9, 300.0),
        DeviceTotal(Device("package-0", "cpu", "rapl"), 400.0, 0.4, 120.0),
        DeviceTotal(Device("dram-0", "dram", "rapl", parent="package-0"), 40.0, 0.04, 12.0),
        DeviceTotal(Device("ram", "ram", "ram_model", estimated=True), 20.0, 0.02, 6.0),
        DeviceTotal(Device("gpu-0", "gpu", "nvml", uid="GPU-1"), 300.0, 0.3, 100.0),
        DeviceTotal(Device("switch", "other", "declared", estimated=True, scope=BESIDE),
                    60.0, 0.06, 20.0),
    )
    rows = tuple(WorkloadRow("pod", ("shop", "cart"), kind, 1.0, 0.001, 0.5)
                 for kind in ("cpu", "dram", "ram", "gpu", "platform", "other"))
    view = AttributionView("pod", "node", ("namespace", "pod"), rows, (), {}, 1, 0.001, "test",
                           ack=lambda *_: None)
    return Snapshot(1, time.time(), devices, 960.0, 320.0, 0.96,
                    Intensity(100.0, "X", "config", "t"), 1.0, (ProbeStatus("rapl", True, 0),),
                    attribution=view, metered=True, host_estimated_energy_j=60.0)


def test_every_point_follows_the_conventions_and_the_estimated_part_is_said(monkeypatch):
    from carbonmeter.sinks.otlp import OtlpSink

    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    snap = _snapshot()
    with Receiver("http/protobuf") as receiver:
        sink = OtlpSink(otlp_config(receiver.endpoint, "http/protobuf"), lambda: snap)
        sink.start()
        sink.close()
        assert sink.delivered
    [received] = receiver.requests()
    points = received.points()
    types = {(p.metric, p.attributes.get("carbonmeter.device") or
              p.attributes.get("carbonmeter.workload")): p.attributes.get("hw.type")
             for p in points}
    assert {t for t in types.values() if t is not None} <= ENUM
    # the workload points use the enumeration too: DRAM and RAM are memory, not "dram"
    workload = {p.attributes["hw.type"] for p in points
                if p.metric == "carbonmeter.workload.energy"}
    assert workload == {"cpu", "memory", "gpu", "enclosure"}
    hw_energy = {p.attributes["carbonmeter.device"] for p in points if p.metric == "hw.energy"}
    assert hw_energy == {"package-0", "dram-0", "ram", "gpu-0", "switch"}  # no "server"
    host = {p.metric: p.value for p in points if p.attributes.get("hw.id") == "host"}
    assert host == {"hw.host.energy": 960.0, "hw.host.power": 320.0,
                    "carbonmeter.host.estimated_energy": 60.0,
                    "carbonmeter.host.emissions": pytest.approx(0.96)}
    descriptions = {m.name: m.description for rm in received.request.resource_metrics
                    for sm in rm.scope_metrics for m in sm.metrics}
    assert "measured components" not in descriptions["hw.host.energy"]
    assert "estimated" in descriptions["hw.host.energy"]


def test_otel_metrics_exporter_none_turns_otlp_off(tmp_path):
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert config.load(env=on).otlp.enabled
    assert not config.load(env={**on, "OTEL_METRICS_EXPORTER": "none"}).otlp.enabled
    assert not config.load(env={**on, "OTEL_METRICS_EXPORTER": "prometheus"}).otlp.enabled
    assert config.load(env={**on, "OTEL_METRICS_EXPORTER": "otlp,console"}).otlp.enabled
    # asking for otlp alone is enough: the specification's default endpoint
    alone = config.load(env={"OTEL_METRICS_EXPORTER": "otlp"}).otlp
    assert alone.enabled and alone.endpoint == "http://localhost:4318/v1/metrics"
    with pytest.raises(config.ConfigError, match=r"environment: OTEL_METRICS_EXPORTER: "
                                                 r"'otlpp' is not one of otlp, none"):
        config.load(env={"OTEL_METRICS_EXPORTER": "otlpp"})
    # the file's explicit choice wins, as in the SDKs
    path = tmp_path / "c.yaml"
    path.write_text("otlp: {enabled: true}\n")
    assert config.load(path, env={**on, "OTEL_METRICS_EXPORTER": "none"}).otlp.enabled


def test_otel_metric_export_timeout_bounds_each_export(tmp_path):
    """A collector that answers after 3 s: with OTEL_METRIC_EXPORT_TIMEOUT=400 the export,
    retries included, gives up within about that, and stop() is not held for 10 s."""
    from carbonmeter.sinks.otlp import OtlpSink

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert config.load(env=env).otlp.timeout_seconds == 10
    assert config.load(env={**env, "OTEL_METRIC_EXPORT_TIMEOUT": "400"}).otlp.timeout_seconds \
        == 0.4
    assert config.load(env={**env, "OTEL_METRIC_EXPORT_TIMEOUT": "4000",
                            "OTEL_EXPORTER_OTLP_TIMEOUT": "2000"}).otlp.timeout_seconds == 2
    with Receiver("http/protobuf", delay=3.0) as receiver:
        cfg = config.load(env={"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": receiver.endpoint,
                               "OTEL_METRIC_EXPORT_TIMEOUT": "400",
                               "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}).otlp
        sink = OtlpSink(cfg, _snapshot)
        sink.start()
        t = time.monotonic()
        sink.close()
        took = time.monotonic() - t
    assert not sink.delivered and took < 2.5, took


def test_the_error_of_an_estimated_device_goes_over_otlp(caplog):
    """carbonmeter.estimate.relative_error carries the same value as Prometheus's
    carbonmeter_estimate_relative_error_ratio, on the device's attributes; measured
    devices have none."""
    from carbonmeter.sinks.otlp import OtlpSink

    cpu = Device("cpu", "cpu", "cpu_model", estimated=True, mean_power=True,
                 error=(0.3, 0.1), power_range_w=(20.0, 100.0))
    pkg = Device("package-0", "cpu", "rapl", wrap_uj=1e12)
    snap = Snapshot(1, time.time(), (DeviceTotal(cpu, 600.0, 0.06, 60.0),
                                     DeviceTotal(pkg, 500.0, 0.05, 50.0)),
                    1100.0, 110.0, 0.11, Intensity(100.0, "X", "config", "t"), 1.0,
                    (ProbeStatus("cpu_model", True, 0),), host_estimated_energy_j=600.0)
    with Receiver("http/protobuf") as receiver:
        sink = OtlpSink(otlp_config(receiver.endpoint, "http/protobuf"), lambda: snap)
        sink.start()
        sink.close()
        assert sink.delivered
    errors = [p for r in receiver.requests() for p in r.points()
              if p.metric == "carbonmeter.estimate.relative_error"]
    assert [(p.attributes["hw.id"], p.value) for p in errors] == [("cpu", pytest.approx(0.2))]
    assert "Callback failed" not in caplog.text
