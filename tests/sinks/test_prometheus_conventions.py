"""/metrics as Prometheus users expect it: an info series per device that joins with other
exporters, the process's own `process_*` metrics, and label values without spaces.

The join is checked by PromQL itself (promtool's rule unit tests evaluate expressions over
given series): carbonmeter's exposition, rendered from the real NVML and RAPL probes on a fake
NVML and a powercap fixture, beside a dcgm-exporter series of the same GPU as dcgm-exporter
labels it (`gpu`, `UUID`, `modelName`, `Hostname`).
"""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes.base import Paths
from carbonmeter.probes.nvml import NvmlProbe
from carbonmeter.probes.rapl import RaplProbe
from carbonmeter.sampler import Sampler
from carbonmeter.sinks.prometheus import Renderer
from tests.attribution.helpers import CPU, attributor, step
from tests.fakes.fake_nvml import FakeGpu, FakeNvml
from tests.fakes.probe import ScriptedProbe
from tests.fixtures.node import standard_node
from tests.fixtures.powercap import two_sockets_with_dram
from tests.helpers import require

UUID = "GPU-8a1b2c3d-0000-1111-2222-333344445555"
MODEL = "NVIDIA A100-SXM4-40GB"


@pytest.fixture
def exposition(tmp_path, monkeypatch) -> str:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    tree = two_sockets_with_dram(tmp_path / "sys")
    gpu = FakeGpu(MODEL, UUID, power_mw=250_000, energy_counter=True)
    probes = [RaplProbe(Paths(sysfs=tree.root)), NvmlProbe(nvml=FakeNvml([gpu]))]
    s = Sampler(probes, Static(Intensity(56.0, "FR", "bundled", "t")), pue=1.0, interval=3600)
    s.sample()
    tree.advance("intel-rapl:0", 100.0)
    gpu.advance(1.0)
    time.sleep(0.01)
    s.sample()
    body, _ = Renderer(lambda: s.latest).render("", False)
    s.close()
    out = subprocess.run([require("promtool"), "check", "metrics"], input=body,
                         capture_output=True)
    assert out.returncode == 0 and not out.stdout and not out.stderr, out
    return body.decode()


def test_one_info_series_per_device(exposition):
    info = [s for f in text_string_to_metric_families(exposition) for s in f.samples
            if s.name == "carbonmeter_device_info"]
    by_device = {s.labels["device"]: s for s in info}
    assert set(by_device) == {"package-0", "package-1", "dram-0", "dram-1", "gpu-0"}
    assert all(s.value == 1 for s in info)
    assert by_device["gpu-0"].labels == {"device": "gpu-0", "kind": "gpu", "source": "nvml",
                                         "name": MODEL, "uuid": UUID}
    assert by_device["dram-0"].labels["uuid"] == ""  # RAPL zones carry no identity of their own


def _series(exposition: str, **extra: str) -> list[dict[str, str]]:
    """The exposition's samples as promtool input series, constant over the test."""
    out = []
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            labels = {**s.labels, **extra}
            inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            out.append({"series": f"{s.name}{{{inner}}}", "values": f"{s.value}x5"})
    return out


def test_device_info_joins_with_dcgm_exporter_on_the_uuid(exposition, tmp_path):
    """dcgm-exporter labels a GPU's series with UUID and modelName; carbonmeter_device_info
    is what lets PromQL put carbonmeter's device beside them (and its energy beside DCGM's)."""
    dcgm = {"series": f'DCGM_FI_DEV_POWER_USAGE{{gpu="0",UUID="{UUID}",modelName="{MODEL}",'
                      f'Hostname="node-1",instance="node-1:9400"}}', "values": "248x5"}
    mine = _series(exposition, instance="node-1:29100")
    rules = tmp_path / "none.yml"
    rules.write_text("groups: []\n")
    test = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [*mine, dcgm],
        "promql_expr_test": [{
            # DCGM's power beside carbonmeter's device id, matched on the GPU's UUID
            "expr": 'DCGM_FI_DEV_POWER_USAGE * on (UUID) group_left (device) label_replace('
                    'carbonmeter_device_info{kind="gpu"}, "UUID", "$1", "uuid", "(.+)")',
            "eval_time": "2m",
            "exp_samples": [{"labels": f'{{gpu="0",UUID="{UUID}",modelName="{MODEL}",'
                                       f'Hostname="node-1",instance="node-1:9400",'
                                       f'device="gpu-0"}}', "value": 248}]}, {
            # carbonmeter's energy with the model name, as a dashboard would label it
            "expr": 'carbonmeter_energy_joules_total * on (instance, device) '
                    'group_left (name, uuid) carbonmeter_device_info{kind="gpu"}',
            "eval_time": "2m",
            "exp_samples": [{"labels": f'{{device="gpu-0",kind="gpu",source="nvml",'
                                       f'instance="node-1:29100",name="{MODEL}",'
                                       f'uuid="{UUID}"}}',
                             "value": 250.0}]}],  # 250 W for the fixture's 1 s
    }]}
    path = tmp_path / "join_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    out = subprocess.run([require("promtool"), "test", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_exporters_own_process_metrics(exposition):
    """prometheus-client's process collector, on the exporter's registry: its CPU time,
    memory, file descriptors and start time, read from /proc/self."""
    values = {s.name: s.value for f in text_string_to_metric_families(exposition)
              for s in f.samples if s.name.startswith("process_")}
    me = psutil.Process()
    assert values["process_start_time_seconds"] == pytest.approx(me.create_time(), abs=1.0)
    assert 0 < values["process_cpu_seconds_total"] <= sum(me.cpu_times()[:2]) + 0.1
    assert values["process_resident_memory_bytes"] == pytest.approx(me.memory_info().rss,
                                                                    rel=0.5)
    assert 0 < values["process_open_fds"] <= values["process_max_fds"]


def test_no_label_value_of_an_enumeration_holds_a_space(ram_path):
    """`how` of the idle power is `lowest_seen` where nothing is configured or modelled."""
    sn = standard_node(ram_path, processes=10)
    a = attributor(sn.node, "process")
    sampler = Sampler([ScriptedProbe.counting(CPU, joules=10.0)],
                      Static(Intensity(56.0, "FR", "bundled", "t")), pue=1.0, interval=3600,
                      attributor=a)
    sampler.sample()
    step(a, sn.node)
    sampler.sample()
    body, _ = Renderer(lambda: sampler.latest).render("", False)
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    idle = [s for s in samples if s.name == "carbonmeter_idle_power_watts"]
    assert [s.labels["how"] for s in idle] == ["lowest_seen"]
    free_text = {"name", "comm", "region", "pod", "namespace", "container", "version",
                 "python_version"}
    spaced = {(s.name, k, v) for s in samples for k, v in s.labels.items()
              if k not in free_text and any(c.isspace() for c in v)}
    assert spaced == set()
