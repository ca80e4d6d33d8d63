"""The estimated CPU and RAM sources, on fixture procfs trees with the kernel's formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonmeter.probes.base import Paths, ProbeUnavailable
from carbonmeter.probes.cpu_model import CpuModelProbe, estimate_cpu_watts
from carbonmeter.probes.ram_model import RamModelProbe

CPUINFO = """processor\t: {n}
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: {socket}
core id\t\t: {n}

"""


def procfs(tmp_path: Path, *, sockets: int = 2, threads: int = 8,
           model: str = "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") -> Path:
    root = tmp_path / "proc"
    root.mkdir()
    (root / "cpuinfo").write_text("".join(
        CPUINFO.format(n=n, socket=n * sockets // threads).replace(
            "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", model) for n in range(threads)))
    set_stat(root, busy=1000, idle=9000)
    (root / "meminfo").write_text("MemTotal:       16384000 kB\nMemFree:         1000 kB\n")
    return root


def set_stat(root: Path, *, busy: int, idle: int) -> None:
    """/proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice.

    Busy time is spread over user/system/irq; iowait counts as idle; guest is part of user
    already and must not be added twice.
    """
    user, system, irq = busy // 2, busy - busy // 2 - 10, 10
    (root / "stat").write_text(
        f"cpu  {user} 0 {system} {idle - 100} 100 {irq} 0 0 {user} 0\n"
        f"cpu0 {user} 0 {system} {idle - 100} 100 {irq} 0 0 0 0\nintr 1 2 3\n")


def test_probe_uses_table_tdp_times_sockets_and_stat_deltas(tmp_path):
    root = procfs(tmp_path)
    probe = CpuModelProbe(Paths(procfs=root), tdp_table={"xeon platinum 8375c": 300.0})
    assert probe.tdp_watts == 600.0 and "2 socket" in probe.tdp_note
    set_stat(root, busy=1000 + 500, idle=9000 + 500)  # 50 % busy since the last read
    (reading,) = probe.read().readings
    assert reading.device.estimated and reading.device.kind == "cpu"
    # the package curve itself is tested in test_host_estimate.py
    assert reading.power_w == pytest.approx(estimate_cpu_watts(600, 0.5))
    set_stat(root, busy=1500, idle=9500 + 1000)  # idle since
    assert probe.read().readings[0].power_w == pytest.approx(estimate_cpu_watts(600, 0.0))


def test_configured_tdp_wins_and_unknown_cpu_gets_the_default(tmp_path):
    root = procfs(tmp_path, sockets=1, model="Mystery CPU 9000")
    assert CpuModelProbe(Paths(procfs=root), tdp_watts=45).tdp_watts == 45
    probe = CpuModelProbe(Paths(procfs=root), tdp_table={"xeon platinum 8375c": 300.0})
    assert probe.tdp_watts == 85.0 and "set cpu.tdp_watts" in probe.tdp_note


def test_unreadable_proc_is_one_line(tmp_path):
    with pytest.raises(ProbeUnavailable, match=r"cannot read .*stat"):
        CpuModelProbe(Paths(procfs=tmp_path / "nowhere"), tdp_watts=10)


def test_ram_model_is_3_watts_per_8_gb(tmp_path):
    root = procfs(tmp_path)
    probe = RamModelProbe(Paths(procfs=root), watts_per_gb=3 / 8)
    gib = 16384000 / 1024 / 1024
    (reading,) = probe.read().readings
    assert reading.power_w == pytest.approx(gib * 3 / 8)
    assert reading.device.estimated and reading.device.kind == "ram"
    with pytest.raises(ProbeUnavailable, match="MemTotal"):
        RamModelProbe(Paths(procfs=tmp_path / "nowhere"), watts_per_gb=1)
