"""Pushing to a real Prometheus Pushgateway (Debian's prometheus-pushgateway), started per
test on a free port: what it serves back after a push is what Prometheus would scrape."""

from __future__ import annotations

import base64
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbonmeter import config
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import Device
from carbonmeter.sinks.pushgateway import PushError, push_snapshot
from carbonmeter.snapshot import DeviceTotal, ProbeStatus, Snapshot
from tests.fixtures.powercap import two_sockets_with_dram
from tests.helpers import free_port, pushgateway, self_signed, wait_for
from tests.test_end_to_end import metrics, start_serve, stop

PKG = Device("package-0", "cpu", "rapl", name="Intel Xeon Gold 6338")
GPU = Device("gpu-0", "gpu", "nvml", name="NVIDIA A100", uid="GPU-a1")


def snapshot(*totals: tuple[Device, float]) -> Snapshot:
    devices = tuple(DeviceTotal(d, j, j / 3.6e6 * 56, 10.0) for d, j in totals)
    return Snapshot(7, time.time(), devices, sum(j for _, j in totals), 10.0 * len(totals),
                    sum(d.emissions_g for d in devices), Intensity(56, "FR", "bundled", "test"),
                    1.0, (ProbeStatus("rapl", True, 0),))


def section(tmp: Path, url: str, **keys: object) -> config.PushgatewayConfig:
    lines = "".join(f"  {k}: {v}\n" for k, v in keys.items())
    path = tmp / f"pg-{time.monotonic_ns()}.yaml"
    path.write_text(f"pushgateway:\n  url: {url}\n  timeout_seconds: 5\n{lines}")
    return config.load(path, env={}).pushgateway


def served(url: str, auth: tuple[str, str] | None = None,
           context: ssl.SSLContext | None = None) -> str:
    """What the Pushgateway serves to Prometheus on /metrics."""
    req = urllib.request.Request(f"{url}/metrics")
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(req, timeout=5, context=context) as r:
        return r.read().decode()


def family(text: str, name: str):
    return next(f for f in text_string_to_metric_families(text) if f.name == name)


def test_push_is_served_as_counters_with_its_grouping(tmp_path):
    with pushgateway(tmp_path) as url:
        cfg = section(tmp_path, url, job="train", instance="node-3", grouping="{team: ml}")
        push_snapshot(cfg, snapshot((PKG, 1500.25), (GPU, 36000.0)))
        text = served(url)

    # Pushed counters stay counters (TYPE lines), with the exporter's own names.
    assert "# TYPE carbonmeter_energy_joules_total counter" in text
    assert "# TYPE carbonmeter_host_energy_joules_total counter" in text
    assert "# TYPE carbonmeter_emissions_grams_total counter" in text
    assert "# TYPE carbonmeter_power_watts gauge" in text
    energy = {s.labels["device"]: s for s in family(text, "carbonmeter_energy_joules").samples}
    assert energy["package-0"].value == 1500.25 and energy["gpu-0"].value == 36000.0
    assert energy["gpu-0"].labels == {"job": "train", "instance": "node-3", "team": "ml",
                                      "device": "gpu-0", "kind": "gpu", "source": "nvml"}
    assert family(text, "carbonmeter_carbon_intensity_grams_per_kilowatt_hour").samples[0] \
        .value == 56
    push_time = family(text, "push_time_seconds").samples[0]
    assert push_time.labels == {"job": "train", "instance": "node-3", "team": "ml"}


def test_push_replaces_its_own_group_and_delete_removes_only_it(tmp_path):
    with pushgateway(tmp_path) as url:
        a = section(tmp_path, url, instance="a")
        b = section(tmp_path, url, instance="b")
        push_snapshot(a, snapshot((PKG, 1.0), (GPU, 2.0)))
        push_snapshot(b, snapshot((PKG, 10.0)))
        push_snapshot(a, snapshot((PKG, 3.0)))  # the GPU left: PUT drops its series
        energy = {(s.labels["instance"], s.labels["device"]): s.value for s in
                  family(served(url), "carbonmeter_energy_joules").samples}
        assert energy == {("a", "package-0"): 3.0, ("b", "package-0"): 10.0}

        push_snapshot(a, snapshot(), delete=True)
        instances = {s.labels["instance"] for s in
                     family(served(url), "carbonmeter_energy_joules").samples}
        assert instances == {"b"}


def test_instance_defaults_to_the_host_name(tmp_path):
    with pushgateway(tmp_path) as url:
        push_snapshot(section(tmp_path, url), snapshot((PKG, 1.0)))
        sample = family(served(url), "carbonmeter_energy_joules").samples[0]
    assert sample.labels["job"] == "carbonmeter"
    assert sample.labels["instance"] == socket.gethostname()


def test_basic_auth_and_tls(tmp_path):
    """A Pushgateway with a web configuration (exporter-toolkit): TLS with a private CA and
    bcrypt basic auth. Wrong or missing credentials are refused with a clear reason."""
    cert, key = self_signed(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web = (f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
           f"basic_auth_users:\n  pusher: {hashed}\n")
    with pushgateway(tmp_path, web_config=web) as url:
        assert url.startswith("https://")
        good = section(tmp_path, url, username="pusher", password="s3cret", certificate=cert)
        push_snapshot(good, snapshot((PKG, 4.5)))
        ctx = ssl.create_default_context(cafile=str(cert))
        text = served(url, auth=("pusher", "s3cret"), context=ctx)
        assert family(text, "carbonmeter_energy_joules").samples[0].value == 4.5

        wrong = section(tmp_path, url, username="pusher", password="guess", certificate=cert)
        with pytest.raises(PushError, match=r"HTTP 401 Unauthorized \(check pushgateway"):
            push_snapshot(wrong, snapshot((PKG, 1.0)))
        untrusted = section(tmp_path, url, username="pusher", password="s3cret")
        with pytest.raises(PushError, match=r"certificate verify failed"):
            push_snapshot(untrusted, snapshot((PKG, 1.0)))


def test_unreachable_gateway_is_one_line():
    port = free_port()  # nothing listens there
    cfg = config.load(env={"CARBONMETER_PUSHGATEWAY_URL": f"http://127.0.0.1:{port}"})
    with pytest.raises(PushError) as e:
        push_snapshot(cfg.pushgateway, snapshot((PKG, 1.0)))
    assert str(e.value) == f"cannot push to http://127.0.0.1:{port}: Connection refused"


@pytest.mark.parametrize("delete_on_exit", [False, True])
def test_serve_pushes_every_interval_and_at_exit(tmp_path, delete_on_exit):
    """`serve` on a fixture powercap tree pushes while it runs; a Pushgateway that starts
    late is one outage in the log; at SIGTERM the final totals are pushed (or the group
    deleted)."""
    tree = two_sockets_with_dram(tmp_path / "sys")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc, target = start_serve(tmp_path, f"""
paths: {{sysfs: {tmp_path / 'sys'}}}
pushgateway:
  url: {url}
  instance: fixture
  interval_seconds: 0.2
  timeout_seconds: 1
  delete_on_exit: {str(delete_on_exit).lower()}
""", interval=0.1)
    log = tmp_path / "serve.log"
    try:
        wait_for(lambda: "failing" in log.read_text(), what="the outage logged")
        with pushgateway(tmp_path, port=port):
            wait_for(lambda: "recovered" in log.read_text(), what="the recovery logged")
            wait_for(lambda: 'device="dram-1"' in served(url), what="a push with every device")
            tree.advance("intel-rapl:1", 321)
            time.sleep(0.4)  # sampled; nothing changes from here on
            expected = family(metrics(target), "carbonmeter_energy_joules")
            assert stop(proc) == 0
            text = served(url)
    finally:
        if proc.poll() is None:
            stop(proc)
    lines = log.read_text().splitlines()
    assert len([ln for ln in lines if "failing" in ln]) == 1, lines
    assert len([ln for ln in lines if "recovered" in ln]) == 1, lines
    if delete_on_exit:
        assert "carbonmeter_energy_joules" not in text
        assert any("deleted the Pushgateway group at exit" in ln for ln in lines)
        return
    pushed = {s.labels["device"]: s.value for s in
              family(text, "carbonmeter_energy_joules").samples}
    assert pushed == {s.labels["device"]: s.value for s in expected.samples}
    assert pushed["package-1"] == pytest.approx(321, abs=1e-3)
    assert family(text, "carbonmeter_energy_joules").samples[0].labels["job"] == "carbonmeter"
