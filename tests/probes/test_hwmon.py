"""hwmon sensors on fake sysfs trees with the kernel's layouts (tests/fixtures/hwmon.py):
which sensors are read, as what, and never a rail together with the rail that contains it."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonmeter.accounting import Accounting
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import HOST, PART, Paths, ProbeUnavailable
from carbonmeter.probes.hwmon import HwmonProbe, classify, scan
from tests.fixtures.hwmon import (
    HwmonTree,
    acpi_server_meter,
    amd_energy_chip,
    amdgpu,
    grace_hopper,
    xe_card,
)

INTENSITY = Intensity(100.0, "test", "config", "test")


def probe(tree: HwmonTree, interval: float = 15, **kw) -> HwmonProbe:
    return HwmonProbe(Paths(sysfs=tree.root), interval=interval, **kw)


def test_scan_reads_both_layouts_and_ignores_other_attributes(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    grace_hopper(tree, sockets=1)
    amdgpu(tree)
    sensors = {s.key: s for s in scan(tmp_path)}
    assert set(sensors) == {"power_meter/Module Power Socket 0", "power_meter/Grace Power "
                            "Socket 0", "power_meter/CPU Power Socket 0",
                            "power_meter/SysIO Power Socket 0", "amdgpu/PPT"}
    grace = sensors["power_meter/Grace Power Socket 0"]
    assert grace.path.name == "power1_average" and grace.average_s == 0.05
    assert grace.path.parent.name == "device"  # old style: on the parent device
    assert sensors["amdgpu/PPT"].path.parent.name.startswith("hwmon")


def test_grace_hopper_reads_the_grace_sockets_only(tmp_path: Path) -> None:
    """GH200: Module (everything, GPU included) ⊇ Grace ⊇ CPU rail + SysIO rail + memory.
    The GPU is nvml's; reading Grace per socket counts the rest once."""
    tree = HwmonTree(tmp_path)
    grace_hopper(tree, sockets=2)
    p = probe(tree)
    assert [(d.id, d.kind, d.scope) for d in p.devices] == [
        ("power-meter-grace-power-socket-0", "cpu", PART),
        ("power-meter-grace-power-socket-1", "cpu", PART)]
    skipped = dict(p.skipped)
    assert "inside Grace Power Socket" in skipped["power_meter/CPU Power Socket 1"]
    assert "inside Grace Power Socket" in skipped["power_meter/SysIO Power Socket 0"]
    assert "GPU" in skipped["power_meter/Module Power Socket 0"]
    assert p.covers == frozenset({"cpu", "dram"})  # the Grace rail includes its LPDDR5X
    result = p.read()
    assert result.errors == [] and [r.power_w for r in result.readings] == [120.0, 120.0]


def test_configuration_can_read_the_module_instead(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    grace_hopper(tree, sockets=1)
    p = probe(tree, include=["power_meter/Module Power Socket *"],
              exclude=["power_meter/Grace Power Socket *"],
              kinds={"power_meter/Module Power Socket *": "platform"})
    assert [(d.name, d.kind) for d in p.devices] == [
        ("power_meter/Module Power Socket 0", "platform")]
    assert dict(p.skipped)["power_meter/Grace Power Socket 0"] == "excluded by hwmon.exclude"


def test_averaged_power_is_a_rectangle_only_over_a_window_as_long_as_the_interval(
        tmp_path: Path) -> None:
    """power1_average over 50 ms sampled every 15 s is a sample (trapezoid); over 300 s (an
    x86 server's meter) read every 15 s it is the mean of the interval (rectangle)."""
    tree = HwmonTree(tmp_path)
    grace_hopper(tree, sockets=1, interval_ms=50)
    acpi_server_meter(tree)
    modes = {d.name: d.mean_power for d in probe(tree, interval=15).devices}
    assert modes == {"power_meter/Grace Power Socket 0": False, "power_meter/power1": True}
    assert not any(d.mean_power for d in probe(tree, interval=600).devices)


def test_an_acpi_server_meter_is_the_whole_host(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    acpi_server_meter(tree, watts=310.5)
    (d,) = probe(tree).devices
    assert (d.id, d.kind, d.scope, d.name) == ("power-meter-power1", "platform", HOST,
                                               "power_meter/power1")
    assert probe(tree).read().readings[0].power_w == 310.5


def test_two_gpus_of_one_model_get_distinct_stable_ids(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    amdgpu(tree, pci="0000:43:00.0", watts=40)
    amdgpu(tree, pci="0000:03:00.0", watts=30)
    p = probe(tree)
    # ordered by device path (PCI address), not by hwmonN, which depends on probe order
    assert [(d.id, d.kind) for d in p.devices] == [("amdgpu-ppt", "gpu"), ("amdgpu-ppt-2", "gpu")]
    assert [r.power_w for r in p.read().readings] == [30.0, 40.0]


def test_an_apu_can_be_left_to_rapl(tmp_path: Path) -> None:
    """On an AMD APU amdgpu's PPT is the whole package, which RAPL measures: exclude it."""
    tree = HwmonTree(tmp_path)
    amdgpu(tree)
    with pytest.raises(ProbeUnavailable, match=r"excluded by hwmon\.exclude"):
        probe(tree, exclude=["amdgpu/*"])


def test_energy_counters_are_read_and_a_rail_inside_another_is_not(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    chip = xe_card(tree, card_uj=5_000_000, pkg_uj=3_000_000)
    p = probe(tree)
    assert [d.name for d in p.devices] == ["xe/card"]
    assert dict(p.skipped)["xe/pkg"] == "inside xe/card"
    tree.set(chip, "energy1_input", 7_500_000)
    (r,) = p.read().readings
    assert (r.counter_uj, r.power_w) == (7_500_000, None)


def test_unknown_chips_are_listed_with_how_to_read_them(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    tree.add_chip("mystery", "platform/mystery.0", {"power1_input": 7_000_000,
                                                    "power1_label": "VDD_IN"})
    with pytest.raises(ProbeUnavailable, match=r"mystery/VDD_IN: unknown chip.*hwmon.kinds"):
        probe(tree)
    (d,) = probe(tree, kinds={"mystery/VDD_*": "host"}).devices
    assert (d.kind, d.scope) == ("platform", HOST)
    (d,) = probe(tree, include=["mystery/*"]).devices
    assert d.kind == "other"


def test_cpu_sensors_stand_down_for_rapl_but_gpus_do_not(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    grace_hopper(tree, sockets=1)
    amdgpu(tree)
    p = probe(tree, measured={"cpu": "rapl", "dram": "rapl"})
    assert [d.name for d in p.devices] == ["amdgpu/PPT"]
    assert dict(p.skipped)["power_meter/Grace Power Socket 0"] == "cpu measured by rapl"


def test_amd_energy_is_left_to_its_own_probe(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    amd_energy_chip(tree)
    with pytest.raises(ProbeUnavailable, match="read by the amd_energy probe"):
        probe(tree)


def test_a_sensor_that_fails_is_one_error_and_the_others_go_on(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    first = amdgpu(tree, pci="0000:03:00.0")
    amdgpu(tree, pci="0000:43:00.0", watts=50)
    p = probe(tree)
    tree.remove(first, "power1_average")  # GPU unbound
    result = p.read()
    assert [r.power_w for r in result.readings] == [50.0]
    assert len(result.errors) == 1 and "amdgpu-ppt: cannot read" in result.errors[0]


def test_no_sensors_at_all(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable, match="no hwmon power or energy sensor"):
        probe(HwmonTree(tmp_path))


def test_power_is_integrated_by_the_exporter(tmp_path: Path) -> None:
    """Grace sockets sampled at 100 W then 140 W ten seconds apart: 1200 J by trapezoid."""
    tree = HwmonTree(tmp_path)
    chips = grace_hopper(tree, sockets=1, watts={"Module": 500, "Grace": 100, "CPU": 70,
                                                 "SysIO": 20})
    p = probe(tree)
    acc = Accounting(1.0)
    for r in p.read().readings:
        acc.add(r, 0.0, INTENSITY)
    tree.set(chips[("Grace", 0)], "power1_average", 140_000_000)
    for r in p.read().readings:
        acc.add(r, 10.0, INTENSITY)
    (total,) = acc.totals()
    assert total.energy_j == pytest.approx(1200.0)


@pytest.mark.parametrize(("key", "kind"), [
    ("amdgpu/PPT", "gpu"), ("amdgpu/slowPPT", "gpu"), ("amdgpu/fastPPT", None),
    ("nouveau/power1", "gpu"), ("zenpower/SVI2_P_Core", "cpu"), ("power_meter/power1", "host"),
    ("power_meter/Grace Power Socket 3", "cpu"), ("power_meter/CPU Power Socket 3", None),
])
def test_built_in_table(key: str, kind: str | None) -> None:
    assert classify(key)[0] == kind
