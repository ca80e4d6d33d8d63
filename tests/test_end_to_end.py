"""`carbonmeter serve` as users run it, scraped by a real Prometheus server.

The exporter runs as a subprocess on a fixture powercap tree (two sockets with DRAM, the
kernel's counter semantics) and a fake NVML (one GPU with an energy counter, one with power
only), exactly as it would on such a server; Prometheus scrapes it and the test queries
Prometheus, not the exporter.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonmeter.carbon.regions import find_region
from tests.fakes.fake_nvml import FakeGpu, write_state
from tests.fixtures.powercap import FAST_FORWARD_UW, one_socket, two_sockets_with_dram
from tests.helpers import (
    fake_executable,
    free_port,
    http_get,
    prom_query,
    prometheus,
    require,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "tests" / "fakes" / "nvml_shim"


def start_serve(tmp: Path, config: str, *, env: dict[str, str] | None = None,
                interval: float = 0.2) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cfg = tmp / "carbonmeter.yaml"
    cfg.write_text(config)
    with open(tmp / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "carbonmeter", "serve", "--config", str(cfg),
             "--listen", f"127.0.0.1:{port}", "--interval", str(interval)],
            env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"127.0.0.1:{port}"


def metrics(target: str) -> str:
    return http_get(f"http://{target}/metrics")[2].decode()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(15)


def value(url: str, expr: str) -> float:
    result = prom_query(url, expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def test_serve_on_fixtures_scraped_by_prometheus(tmp_path):
    tree = two_sockets_with_dram(tmp_path / "sys", max_power_uw=FAST_FORWARD_UW)
    # Start package-0 near the top of its range so the run crosses a wrap.
    tree.advance("intel-rapl:0", 262_000)
    state = tmp_path / "nvml.json"
    write_state(state, [
        FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-a1", power_mw=250_000, energy_counter=True),
        FakeGpu("Tesla P4", "GPU-p4", power_mw=100_000, energy_counter=False),
    ])
    proc, target = start_serve(tmp_path, f"""
paths: {{sysfs: {tmp_path / 'sys'}}}
carbon: {{region: FR, pue: 1.2}}
""", env={"PYTHONPATH": f"{SHIM}:{ROOT}", "FAKE_NVML_STATE": str(state)})
    try:
        wait_for(lambda: 'device="dram-1"' in metrics(target), what="first sample")
        with prometheus(tmp_path, [target]) as prom:
            before = {z: tree.true_energy_j(z) for z in tree.zones()}
            added = {"intel-rapl:0": 0.0, "intel-rapl:1": 0.0, "intel-rapl:0:0": 0.0}
            for _ in range(6):  # 6 x 60 kJ: package-0 wraps once; each step < one wrap
                for zone, joules in (("intel-rapl:0", 60_000), ("intel-rapl:1", 5_000),
                                     ("intel-rapl:0:0", 700.5)):
                    tree.advance(zone, joules)
                    added[zone] += joules
                time.sleep(0.5)
            assert tree.wraps("intel-rapl:0") >= 1
            time.sleep(1.0)  # the exporter samples the last step
            done = time.time()
            wait_for(lambda: [r for r in prom_query(
                prom, "timestamp(carbonmeter_host_energy_joules_total)")
                if float(r["value"][1]) > done + 0.1], what="a scrape after the last step")

            def energy(device: str) -> float:
                return value(prom, f'carbonmeter_energy_joules_total{{device="{device}"}}')

            for device, zone in (("package-0", "intel-rapl:0"), ("package-1", "intel-rapl:1"),
                                 ("dram-0", "intel-rapl:0:0")):
                true = tree.true_energy_j(zone) - before[zone]
                assert true == pytest.approx(added[zone], abs=1e-3)
                # exact to 1 µJ per wrap (plus the kernel's flooring of each reading)
                assert abs(energy(device) - true) <= 1e-6 * (1 + tree.wraps(zone)) + 1e-6, device

            labels = prom_query(prom, 'carbonmeter_energy_joules_total{device="gpu-1"}')
            assert labels[0]["metric"]["kind"] == "gpu" and labels[0]["metric"]["source"] == "nvml"
            gpu0_watts = value(prom, 'carbonmeter_power_watts{device="gpu-0"}')
            assert gpu0_watts == pytest.approx(250, rel=0.02)
            assert value(prom, 'carbonmeter_power_watts{device="gpu-1"}') == pytest.approx(100)
            assert energy("gpu-0") / energy("gpu-1") == pytest.approx(2.5, rel=0.05)

            fr = find_region("FR").g_per_kwh
            for device in ("package-0", "gpu-0"):
                grams = value(prom, f'carbonmeter_emissions_grams_total{{device="{device}"}}')
                assert grams == pytest.approx(energy(device) / 3.6e6 * 1.2 * fr, rel=1e-9)
            assert value(prom, "carbonmeter_host_energy_joules_total") == pytest.approx(
                value(prom, "sum(carbonmeter_energy_joules_total)"), rel=1e-12)
            assert value(prom, 'carbonmeter_carbon_intensity_grams_per_kilowatt_hour'
                               '{region="FR",provider="bundled"}') == fr
            assert value(prom, "carbonmeter_pue_ratio") == 1.2
            assert value(prom, "sum(carbonmeter_probe_up)") == 3
            # RAPL and NVML measure; only the rest of the server is estimated, and only it
            # carries an error bar
            estimated = prom_query(prom, 'carbonmeter_energy_joules_total{source=~".*_model"}')
            assert [r["metric"]["source"] for r in estimated] == ["platform_model"]
            errors = prom_query(prom, "carbonmeter_estimate_relative_error_ratio")
            assert [r["metric"]["device"] for r in errors] == ["platform"]
            assert 0 < float(errors[0]["value"][1]) < 1

        out = subprocess.run([require("promtool"), "check", "metrics"],
                             input=http_get(f"http://{target}/metrics")[2], capture_output=True)
        assert out.returncode == 0 and not out.stdout and not out.stderr, out
        assert http_get(f"http://{target}/healthz")[0] == 200
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert "stopped" in (tmp_path / "serve.log").read_text()


def test_default_configuration_runs_on_a_machine_without_sensors(tmp_path):
    """No RAPL, hwmon or GPU here: the built-in defaults fall back to the estimates."""
    proc, target = start_serve(tmp_path, "", interval=0.2)
    try:
        wait_for(lambda: 'source="ram_model"' in metrics(target), what="first sample")
        wait_for(lambda: 'carbonmeter_power_watts{device="cpu"' in metrics(target),
                 what="a CPU power estimate")
        text = metrics(target)
        assert 'kind="cpu",source="cpu_model"' in text
        # every estimated device says how far off it may be
        for device, kind, source in (("cpu", "cpu", "cpu_model"), ("ram", "ram", "ram_model"),
                                     ("platform", "platform", "platform_model")):
            assert re.search(rf'^carbonmeter_estimate_relative_error_ratio{{device="{device}",'
                             rf'kind="{kind}",source="{source}"}} 0\.\d+$', text, re.M), device
        assert '{provider="default",region="world"} 475.0' in text
    finally:
        assert stop(proc) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "no carbon.region configured" in log
    if not Path("/sys/class/powercap/intel-rapl:0").exists():
        assert "probe rapl not used: no RAPL zones" in log


def test_probes_command_says_what_runs_and_why_not(tmp_path):
    tree = two_sockets_with_dram(tmp_path / "sys")
    assert tree.zones()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "probes", "--config", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "package-0 (cpu, measured)" in out.stdout and "dram-1 (dram, measured)" in out.stdout
    assert re.search(r"^cpu_model +not used$", out.stdout, re.M)
    assert "not needed: the CPU is measured by rapl" in out.stdout
    assert "nvml" in out.stdout and "world average" in out.stdout


def _fake_ipmitool(tmp: Path, watts: int) -> dict[str, str]:
    """A fake ipmitool on PATH (tests/fakes/fake_ipmitool.py) reporting `watts`, and the
    device node of the BMC it talks to (/dev/ipmi0, in a fake devfs)."""
    fake_executable(tmp / "bin", "ipmitool", ROOT / "tests" / "fakes" / "fake_ipmitool.py")
    (tmp / "watts").write_text(str(watts))
    (tmp / "dev").mkdir(exist_ok=True)
    (tmp / "dev" / "ipmi0").touch()
    return {"PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "FAKE_IPMITOOL_WATTS":
            str(tmp / "watts"), "FAKE_IPMITOOL_CASE": "ok",
            "CARBONMETER_PATHS_DEVFS": str(tmp / "dev")}


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("carbonmeter_") and not line.startswith("carbonmeter_build"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_whole_server_meter_is_the_host_total_and_components_a_breakdown(tmp_path):
    """RAPL measures the package, the BMC (IPMI DCMI) the whole server, and a switch is
    declared beside it: the host total is server + switch, the package is not added again."""
    tree = one_socket(tmp_path / "sys")
    proc, target = start_serve(tmp_path, f"""
paths: {{sysfs: {tmp_path / 'sys'}}}
probes: {{disabled: [nvml]}}
declared: [{{id: switch-1, kind: other, watts: 45, name: ToR switch}}]
""", env=_fake_ipmitool(tmp_path, 250))
    try:
        for _ in range(5):
            tree.advance("intel-rapl:0", 30)
            time.sleep(0.2)
        wait_for(lambda: 'carbonmeter_power_watts{device="server"' in metrics(target),
                 what="two IPMI readings")
        m = _samples(metrics(target))
        server = m['carbonmeter_energy_joules_total{device="server",kind="platform",'
                   'source="ipmi"}']
        switch = m['carbonmeter_energy_joules_total{device="switch-1",kind="other",'
                   'source="declared"}']
        package = m['carbonmeter_energy_joules_total{device="package-0",kind="cpu",'
                    'source="rapl"}']
        assert package > 0 and server > 0 and switch > 0
        assert m["carbonmeter_host_energy_joules_total"] == pytest.approx(server + switch,
                                                                          rel=1e-12)
        assert m["carbonmeter_host_power_watts"] == pytest.approx(250 + 45)
        assert 'probe="ipmi"} 1.0' in metrics(target)
    finally:
        assert stop(proc) == 0, (tmp_path / "serve.log").read_text()
    log = (tmp_path / "serve.log").read_text()
    assert "probe ipmi: server (platform, measured, the whole host)" in log


def test_probes_command_lists_every_source_with_its_reason(tmp_path):
    from tests.fixtures.hwmon import HwmonTree, grace_hopper

    grace_hopper(HwmonTree(tmp_path / "sys"), sockets=1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "declared: [{id: shelf-1, kind: platform, watts: 120}]\n")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "probes", "--config", str(cfg)],
                         capture_output=True, text=True,
                         env={**os.environ, **_fake_ipmitool(tmp_path, 400)})
    assert out.returncode == 0, out.stderr
    text = out.stdout
    names = re.findall(r"^(\w+) +(available|not used)$", text, re.M)
    assert [n for n, _ in names] == ["rapl", "amd_energy", "hwmon", "nvml", "powermetrics",
                                     "powergadget", "redfish", "ipmi", "declared",
                                     "cpu_model", "ram_model", "platform_model"]
    assert re.search(r"^platform_model +not used\n +not needed: the whole host is measured by "
                     r"ipmi$", text, re.M)
    assert "power-meter-grace-power-socket-0 (cpu, measured)" in text
    assert "skipped power_meter/CPU Power Socket 0: inside Grace Power Socket" in text
    assert "server (platform, measured, the whole host)" in text
    assert "shelf-1 (platform, declared, beside the host)" in text
    assert "no redfish.url configured" in text
    assert "Intel has discontinued Intel Power Gadget" in text
    assert "not needed: the CPU is measured by hwmon" in text
    assert "not needed: memory is measured by hwmon" in text
