"""carbonmeter_host_estimated_energy_joules_total: how much of the host's energy models
estimated, by the same host rule as the host total (carbonmeter.snapshot.counted).

Counters that count a known number of joules a read (tests/fakes/probe.py) stand for a RAPL
package and a BMC meter; the CPU and RAM estimates and a declared switch are the estimated
sources, as their probes mark them.
"""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes.base import BESIDE, HOST, Device, ProbeRead, Reading
from carbonmeter.sampler import Sampler
from carbonmeter.sinks.prometheus import Renderer
from tests.fakes.probe import ScriptedProbe
from tests.helpers import require

C = Static(Intensity(100.0, "X", "config", "t"))
PKG = Device("package-0", "cpu", "rapl")
METER = Device("server", "platform", "ipmi", scope=HOST)
RAM = Device("ram", "ram", "ram_model", estimated=True)
CPU = Device("cpu", "cpu", "cpu_model", estimated=True, mean_power=True)
SWITCH = Device("switch", "other", "declared", estimated=True, mean_power=True, scope=BESIDE)


def power(*devices: Device, watts: float) -> ScriptedProbe:
    """Power sources at a constant `watts` each."""
    return ScriptedProbe(devices, script=lambda n: ProbeRead(
        [Reading(d, power_w=watts) for d in devices], []), name=devices[0].source)


def host(probes: list, steps: int = 3) -> dict[str, float]:
    clock = [1000.0]
    s = Sampler(probes, C, pue=1.0, interval=1.0, clock=lambda: clock[0])
    for _ in range(steps):
        s.sample()
        clock[0] += 1.0
    body, _ = Renderer(lambda: s.latest).render("", False)
    out = subprocess.run([require("promtool"), "check", "metrics"], input=body,
                         capture_output=True)
    assert out.returncode == 0 and not out.stdout and not out.stderr, out
    values = {s.name: s.value for f in text_string_to_metric_families(body.decode())
              for s in f.samples}
    return {"host": values["carbonmeter_host_energy_joules_total"],
            "host_estimated": values["carbonmeter_host_estimated_energy_joules_total"]}


def test_measured_and_estimated_parts():
    # 3 reads: 2 intervals of 10 J from the counter; the RAM at 4 W for 2 s is 8 J
    got = host([ScriptedProbe.counting(PKG, joules=10.0, name="rapl"), power(RAM, watts=4.0)])
    assert got == {"host": pytest.approx(28.0), "host_estimated": pytest.approx(8.0)}


def test_all_estimated():
    got = host([power(CPU, watts=50.0), power(RAM, watts=4.0)])
    assert got["host_estimated"] == got["host"] == pytest.approx(108.0)


def test_with_a_whole_host_meter_only_what_is_counted():
    """The meter is the host; the RAM estimate inside it is a breakdown, not counted; the
    declared switch beside it is counted, and it is estimated."""
    got = host([ScriptedProbe.counting(METER, joules=100.0, name="ipmi"),
                power(RAM, watts=4.0), power(SWITCH, watts=30.0)])
    assert got == {"host": pytest.approx(200.0 + 60.0), "host_estimated": pytest.approx(60.0)}
