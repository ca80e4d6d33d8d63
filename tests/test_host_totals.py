"""Host totals: the sum of the devices, or, when a whole-host meter (IPMI, Redfish, an ACPI
power meter) runs, that meter plus what stands beside the host, never its parts again."""

from __future__ import annotations

import pytest

from carbonmeter.carbon.intensity import Intensity, Static
from carbonmeter.probes.base import BESIDE, HOST, Device, Reading
from carbonmeter.probes.declared import DeclaredDevice, DeclaredProbe
from carbonmeter.sampler import Sampler
from tests.fakes.probe import ScriptedProbe

PKG = Device("package-0", "cpu", "rapl", wrap_uj=1e12)
SERVER = Device("server", "platform", "ipmi", scope=HOST)


def scripted(name: str, device: Device) -> ScriptedProbe:
    """A probe whose next reading each step sets; no covers (it stands down for nothing)."""
    return ScriptedProbe([device], name=name, covers=())


def switch() -> DeclaredProbe:
    return DeclaredProbe([DeclaredDevice("switch-1", "other", 45.0)])


NOW = [0.0]  # the sampler's clock, set by each step


def sampler(*probes) -> Sampler:
    return Sampler(list(probes), Static(Intensity(100.0, "t", "config", "t")), pue=1.0,
                   interval=3600, clock=lambda: NOW[0])


def step(s: Sampler, monkeypatch, t: float, pkg_j: float | None, server_w: float | None,
         probes) -> None:
    cpu, meter = probes
    cpu.next = [Reading(PKG, counter_uj=round(pkg_j * 1e6))] if pkg_j is not None else None
    meter.next = [Reading(SERVER, power_w=server_w)] if server_w is not None else None
    NOW[0] = t
    s.sample()


def test_without_a_meter_the_host_is_the_sum(monkeypatch) -> None:
    cpu = scripted("rapl", PKG)
    s = sampler(cpu, switch())
    assert not s.metered
    for t, j in ((0.0, 0.0), (10.0, 600.0)):
        cpu.next = [Reading(PKG, counter_uj=round(j * 1e6))]
        NOW[0] = t
        s.sample()
    snap = s.latest
    assert snap.host_energy_j == pytest.approx(600 + 450)  # package + the 45 W switch
    assert snap.host_power_w == pytest.approx(60 + 45)


def test_with_a_meter_the_parts_are_a_breakdown_and_declared_devices_are_added(
        monkeypatch) -> None:
    cpu, meter = scripted("rapl", PKG), scripted("ipmi", SERVER)
    s = sampler(cpu, meter, switch())
    assert s.metered
    probes = (cpu, meter)
    step(s, monkeypatch, 0.0, 0.0, 200.0, probes)
    step(s, monkeypatch, 10.0, 600.0, 220.0, probes)
    snap = s.latest
    devices = {d.device.id: d.energy_j for d in snap.devices}
    assert devices == pytest.approx({"package-0": 600.0, "server": 2100.0, "switch-1": 450.0})
    assert snap.host_energy_j == pytest.approx(2100 + 450)  # not + 600 for the package
    assert snap.host_power_w == pytest.approx(210 + 45)
    assert {d.device.scope for d in snap.devices} == {"part", HOST, BESIDE}


def test_a_silent_meter_leaves_the_host_unknown_not_summed(monkeypatch) -> None:
    """The meter fails for an interval: the parts are not summed in its place (the host
    counter would jump), and the host's power is unknown until it answers twice again."""
    cpu, meter = scripted("rapl", PKG), scripted("ipmi", SERVER)
    s = sampler(cpu, meter)
    probes = (cpu, meter)
    step(s, monkeypatch, 0.0, 0.0, None, probes)  # the meter does not answer at first
    step(s, monkeypatch, 10.0, 600.0, None, probes)
    assert s.latest.host_energy_j == 0.0 and s.latest.host_power_w is None
    step(s, monkeypatch, 20.0, 1200.0, 200.0, probes)
    step(s, monkeypatch, 30.0, 1800.0, 200.0, probes)
    hosts = [s.latest.host_energy_j]
    step(s, monkeypatch, 40.0, 2400.0, None, probes)
    hosts.append(s.latest.host_energy_j)
    assert s.latest.host_power_w is None
    step(s, monkeypatch, 50.0, 3000.0, 300.0, probes)
    step(s, monkeypatch, 60.0, 3600.0, 300.0, probes)
    hosts.append(s.latest.host_energy_j)
    assert hosts == pytest.approx([2000.0, 2000.0, 5000.0])
    assert s.latest.host_power_w == pytest.approx(300.0)
