"""The workload series on /metrics: names and labels, promtool-clean, ended workloads dropped
once scraped; and `carbonmeter serve` with attribution on, scraped by a real Prometheus."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.sampler import Sampler
from carbonmeter.sinks.prometheus import Renderer
from tests.attribution.helpers import CPU, DRAM, SCRAPE, attributor
from tests.attribution.test_kubernetes import kubelet
from tests.fakes.fake_nvml import FakeGpu, write_state
from tests.fakes.probe import ScriptedProbe
from tests.fixtures.node import standard_node
from tests.fixtures.powercap import two_sockets_with_dram
from tests.helpers import free_port, http_get, prom_query, prometheus, require, wait_for

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "tests" / "fakes" / "nvml_shim"


def counters() -> ScriptedProbe:
    return ScriptedProbe.counting(CPU, DRAM, joules=10.0)


def pids_in(node, rel):
    return [p.pid for p in node.procs.values() if p.cgroup == rel]


def test_exposition_names_labels_promtool_and_scraped_endings(ram_path):
    sn = standard_node(ram_path, processes=100)
    node = sn.node
    a = attributor(node, "container", idle_watts={"cpu": 0})
    sampler = Sampler([counters()], Static(Intensity(56.0, "FR", "bundled", "t")), pue=1.5,
                      interval=3600, attributor=a)
    sampler.sample()
    pod = sn.pods[1]
    c1 = node.container_rel(pod, "c1")
    node.run(pids_in(node, c1)[0], 0.5)
    node.elapse(1)
    node.flush()
    sampler.sample()
    renderer = Renderer(lambda: sampler.latest, SCRAPE)
    body, _ = renderer.render("", False)
    text = body.decode()
    cid = pod.containers["c1"][:12]
    labels = f'container="{cid}",kind="cpu",namespace="",pod="{pod.uid}",workload="container"'
    assert f"carbonmeter_workload_energy_joules_total{{{labels}}} 10.0" in text
    assert f"carbonmeter_workload_power_watts{{{labels}}}" in text
    assert f"carbonmeter_workload_emissions_grams_total{{{labels}}} " \
        f"{10.0 / 3.6e6 * 1.5 * 56.0}" in text
    assert ('carbonmeter_workload_energy_joules_total{container="",kind="dram",namespace="",'
            'pod="",workload="unattributed"}') in text
    assert 'carbonmeter_idle_power_watts{device="package-0",how="configured",kind="cpu"} 0.0' \
        in text
    assert "# TYPE carbonmeter_attribution_duration_seconds gauge" in text
    out = subprocess.run([require("promtool"), "check", "metrics"], input=body,
                         capture_output=True)
    assert out.returncode == 0 and not out.stdout and not out.stderr, out
    # c1 stops: its last row is published once more, scraped, then gone
    node.remove_container(pod, "c1")
    node.elapse(1)
    node.flush()
    sampler.sample()
    assert f'pod="{pod.uid}",workload="container"}} 10.0' in renderer.render("", False)[0].decode()
    sampler.sample()
    assert cid not in renderer.render("", False)[0].decode()


def test_attribution_off_adds_nothing(ram_path):
    sampler = Sampler([counters()], Static(Intensity(56.0, "FR", "bundled", "t")), pue=1.0,
                      interval=3600)
    sampler.sample()
    assert sampler.latest.attribution is None
    assert b"carbonmeter_workload" not in Renderer(lambda: sampler.latest).render("", False)[0]


def test_serve_attributes_per_container_scraped_by_prometheus(ram_path, tmp_path):
    sn = standard_node(ram_path, processes=300)
    node = sn.node
    tree = two_sockets_with_dram(node.sysfs)
    train = pids_in(node, node.container_rel(sn.pods[1], "c1"))[0]
    state = tmp_path / "nvml.json"
    write_state(state, [FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-a1", power_mw=250_000,
                                processes={train: 20 << 30}, sm_util={train: 90})])
    with kubelet(node.pod_list) as (url, _):
        cfg = tmp_path / "carbonmeter.yaml"
        cfg.write_text(f"""
paths: {{sysfs: {node.sysfs}, procfs: {node.procfs}}}
carbon: {{region: FR}}
attribution:
  level: container
  kubelet_url: {url}
  idle_watts: {{cpu: 5, gpu: 50}}
""")
        port = free_port()
        with open(tmp_path / "serve.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "carbonmeter", "serve", "--config", str(cfg), "--listen",
                 f"127.0.0.1:{port}", "--interval", "0.2"],
                env={**os.environ, "PYTHONPATH": f"{SHIM}:{ROOT}", "FAKE_NVML_STATE": str(state)},
                stdout=log, stderr=subprocess.STDOUT)
        target = f"127.0.0.1:{port}"
        try:
            def metrics() -> str:
                return http_get(f"http://{target}/metrics")[2].decode()

            side = pids_in(node, sn.sidecar)[0]
            wait_for(lambda: "carbonmeter_workload_energy_joules_total" in metrics(),
                     what="workload series")
            with prometheus(tmp_path, [target]) as prom:
                for _ in range(8):  # the sidecar container and c1 work; RAPL counts
                    node.run(side, 0.2)
                    node.run(train, 0.1)
                    node.elapse(0.25)
                    node.flush()
                    tree.advance("intel-rapl:0", 20.0)
                    tree.advance("intel-rapl:1", 10.0)
                    tree.advance("intel-rapl:0:0", 2.0)
                    time.sleep(0.25)
                wait_for(lambda: prom_query(prom, 'carbonmeter_workload_energy_joules_total'
                                            '{container="carbonmeter",kind="cpu"} > 0'),
                         what="the sidecar's energy in Prometheus")
                row = prom_query(prom, 'carbonmeter_workload_energy_joules_total'
                                       '{container="carbonmeter",kind="cpu"}')[0]["metric"]
                assert (row["namespace"], row["pod"], row["workload"]) == ("shop", "app-0",
                                                                           "container")
                gpu = prom_query(prom, 'carbonmeter_workload_energy_joules_total'
                                       '{kind="gpu",container="c1"}')
                assert gpu and float(gpu[0]["value"][1]) > 0
                # every scrape: the rows add up to the host, to the microjoule
                diff = prom_query(prom, "abs(sum(carbonmeter_workload_energy_joules_total) - "
                                        "sum(carbonmeter_host_energy_joules_total))")
                assert float(diff[0]["value"][1]) < 1e-6
            body = http_get(f"http://{target}/metrics")[2]
            out = subprocess.run([require("promtool"), "check", "metrics"], input=body,
                                 capture_output=True)
            assert out.returncode == 0 and not out.stdout and not out.stderr, out
        finally:
            proc.terminate()
            code = proc.wait(15)
    log_text = (tmp_path / "serve.log").read_text()
    assert code == 0, log_text
    assert "attribution per container (scope node)" in log_text
    assert "Traceback" not in log_text


def test_serve_reports_why_attribution_cannot_run(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"attribution: {{level: pod, cgroupfs: {tmp_path / 'none'}}}\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "carbonmeter", "serve", "--config", str(cfg),
                             "--listen", f"127.0.0.1:{port}", "--interval", "0.2"],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{port}/metrics")[0] == 200,
                 what="serving")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "attribution off: no cgroup hierarchy with CPU accounting" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("text", "expected"), [
    ("attribution:\n  level: pods\n", "attribution.level: 'pods' is not one of none, pod, "
                                      "container, process"),
    ("attribution:\n  level: process\n  idle_policy: requests\n",
     "'requests' needs attribution.level pod or container"),
    ("attribution:\n  top_n: 2.5\n", "attribution.top_n: must be a whole number from 1 to"),
    ("attribution:\n  idle_watts: {dram: 3}\n", "attribution.idle_watts: unknown key 'dram'"),
    ("attribution:\n  scope: cluster\n", "'cluster' is not one of node, self"),
])
def test_configuration_errors(tmp_path, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "config", "check", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and expected in out.stderr and str(cfg) in out.stderr, out.stderr


def test_otlp_attributes_of_rows(ram_path):
    sn = standard_node(ram_path, processes=40)
    node = sn.node
    env = {"POD_UID": sn.web.uid, "POD_NAME": "web-7d9f", "POD_NAMESPACE": "shop"}
    a = attributor(node, "container", env=env, scope="self", idle_watts={"cpu": 0})
    node.run(pids_in(node, sn.sidecar)[0], 0.5)
    node.elapse(1)
    node.flush()
    from carbonmeter.accounting import EnergyDelta
    from tests.attribution.helpers import INTENSITY

    a.account([EnergyDelta(CPU, 10.0, 1.0)], INTENSITY, 1.0)
    view = a.view()
    row = next(r for r in view.rows if r.workload == "container")
    cid = sn.web.containers["carbonmeter"]
    assert view.otel_attributes(row) == {
        "k8s.namespace.name": "shop", "k8s.pod.name": "web-7d9f",
        "k8s.container.name": cid[:12], "k8s.pod.uid": sn.web.uid, "container.id": cid,
        "container.runtime": "containerd", "carbonmeter.workload": "container",
        "hw.type": "cpu"}
    other = next(r for r in view.rows if r.workload == "other")
    assert view.otel_attributes(other) == {"carbonmeter.workload": "other", "hw.type": "cpu"}
