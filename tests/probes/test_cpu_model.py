"""The estimated CPU, RAM and platform sources, on fixture /proc and /sys trees.

/proc/stat's first line is the kernel's: user nice system idle iowait irq softirq steal guest
guest_nice, in jiffies, guest already inside user; /proc/cpuinfo has one block per logical CPU
(`flags` carries `hypervisor` in a guest); cgroup v2 cpu.stat's usage_usec is the cgroup's CPU
time in µs. Expected watts come from the rows of config/power_model.csv and power_params.csv.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonmeter.probes import cpu_model
from carbonmeter.probes.base import Paths, ProbeUnavailable, relative_error
from carbonmeter.probes.cpu_model import CpuModelProbe
from carbonmeter.probes.platform_model import PlatformModelProbe
from carbonmeter.probes.ram_model import RamModelProbe
from tests.fixtures.tables import rows

ROWS = {r["generation"]: r for r in rows("power_model.csv")}
PARAMS = {r["name"]: r["value"] for r in rows("power_params.csv")}


def fig(generation: str, column: str) -> float:
    return float(ROWS[generation][column])


def machine(tmp_path: Path, *, sockets: int = 2, threads: int = 8, guest: bool = False,
            model: str = "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") -> Paths:
    proc, sys = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    sys.mkdir()
    flags = "fpu vme sse sse2" + (" hypervisor" if guest else "")
    (proc / "cpuinfo").write_text("".join(
        f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 106\n"
        f"model name\t: {model}\nphysical id\t: {n * sockets // threads}\nflags\t\t: {flags}\n\n"
        for n in range(threads)))
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\nMemFree:         1000 kB\n")
    (proc / "self" / "cgroup").write_text("0::/\n")
    set_stat(proc, busy=1000, idle=9000)
    return Paths(sysfs=sys, procfs=proc)


def set_stat(proc: Path, *, busy: int, idle: int) -> None:
    """Busy time spread over user/system/irq; iowait counts as idle; guest is inside user."""
    user, system, irq = busy // 2, busy - busy // 2 - 10, 10
    (proc / "stat").write_text(
        f"cpu  {user} 0 {system} {idle - 100} 100 {irq} 0 0 {user} 0\n"
        f"cpu0 {user} 0 {system} {idle - 100} 100 {irq} 0 0 0 0\nintr 1 2 3\n")


def test_bare_metal_cpu_is_tdp_times_sockets_and_follows_stat(tmp_path: Path) -> None:
    paths = machine(tmp_path)
    probe = CpuModelProbe(paths)
    lo, hi = 600 * fig("intel-icelake", "tdp_idle"), 600 * fig("intel-icelake", "tdp_full")
    assert probe.idle.tdp_watts == 600.0  # 300 W x 2 sockets
    set_stat(paths.procfs, busy=1000 + 500, idle=9000 + 500)  # 50 % busy since the last read
    (reading,) = probe.read().readings
    assert reading.device.estimated and reading.device.kind == "cpu"
    assert reading.power_w == pytest.approx(lo + 0.5 * (hi - lo))
    set_stat(paths.procfs, busy=1500, idle=9500 + 1000)  # idle since
    assert probe.read().readings[0].power_w == pytest.approx(lo)
    assert probe.idle_watts() == {"cpu": pytest.approx(lo)}
    # its error bar: the held-out error of the TDP case, idle to full
    device = probe.devices[0]
    assert device.error == (float(PARAMS["error_tdp_idle"]), float(PARAMS["error_tdp_full"]))
    assert relative_error(device, lo) == device.error[0]
    assert relative_error(device, hi) == device.error[1]


def test_configured_tdp_wins_and_unknown_cpu_is_priced_per_thread(tmp_path: Path) -> None:
    probe = CpuModelProbe(machine(tmp_path / "a"), tdp_watts=45)
    assert probe.idle_watts()["cpu"] == pytest.approx(45 * fig("intel-icelake", "tdp_idle"))
    mystery = CpuModelProbe(machine(tmp_path / "b", sockets=1, model="Mystery CPU 9000"))
    # family 6 model 106 is Ice Lake-SP: its per-thread figure, 8 threads
    assert mystery.idle.case == "generation"
    assert mystery.idle_watts()["cpu"] == pytest.approx(8 * fig("intel-icelake",
                                                                "thread_idle_w"))


def test_guest_is_priced_by_its_vcpus_and_says_why(tmp_path: Path) -> None:
    probe = CpuModelProbe(machine(tmp_path, sockets=1, threads=4, guest=True))
    assert probe.full.case == "guest" and probe.full.tdp_watts is None
    assert probe.devices[0].power_range_w == pytest.approx(
        (4 * fig("intel-icelake", "thread_idle_w"), 4 * fig("intel-icelake", "thread_full_w")))
    notes = "\n".join(probe.notes())
    assert "machine: guest of unnamed hypervisor (cpuinfo flag 'hypervisor')" in notes
    assert "generation intel-icelake" in notes and "4 vCPUs" in notes
    assert f"± {float(PARAMS['error_guest_idle']) * 100:.0f} % at idle" in notes
    # a TDP the user configured is used as given, in a guest too
    told = CpuModelProbe(machine(tmp_path / "told", sockets=1, threads=4, guest=True),
                         tdp_watts=50)
    assert told.idle.case == "tdp" and told.devices[0].power_range_w == pytest.approx(
        (50 * fig("intel-icelake", "tdp_idle"), 50 * fig("intel-icelake", "tdp_full")))


def test_container_load_is_its_own_cpu_time_over_its_limit(tmp_path: Path,
                                                           monkeypatch) -> None:
    paths = machine(tmp_path, threads=8)
    fs = paths.sysfs / "fs" / "cgroup"
    fs.mkdir(parents=True)
    (fs / "cgroup.controllers").write_text("cpu memory\n")
    (fs / "cpu.max").write_text("200000 100000\n")  # 2 CPUs
    (fs / "cpu.stat").write_text("usage_usec 0\n")
    clock = [1000.0]
    monkeypatch.setattr(cpu_model.time, "monotonic", lambda: clock[0])
    probe = CpuModelProbe(paths)
    lo, hi = probe.devices[0].power_range_w
    assert (lo, hi) == pytest.approx((2 * fig("intel-icelake", "thread_idle_w"),
                                      2 * fig("intel-icelake", "thread_full_w")))
    clock[0] += 10
    (fs / "cpu.stat").write_text("usage_usec 5000000\n")  # 5 CPU-s in 10 s of 2 CPUs: 25 %
    set_stat(paths.procfs, busy=9000, idle=9000)  # the host's own load is not the container's
    assert probe.read().readings[0].power_w == pytest.approx(lo + 0.25 * (hi - lo))
    (fs / "cpu.stat").unlink()
    assert probe.read().errors == [f"cpu: cannot read the load: cannot read {fs / 'cpu.stat'}"]


def test_unreadable_proc_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable, match=r"cannot read .*stat"):
        CpuModelProbe(Paths(sysfs=tmp_path, procfs=tmp_path / "nowhere"), tdp_watts=10)


def test_ram_is_watts_per_gb_of_memory_with_its_error_bar(tmp_path: Path) -> None:
    paths = machine(tmp_path)
    probe = RamModelProbe(paths, watts_per_gb=3 / 8)
    (reading,) = probe.read().readings
    assert reading.power_w == pytest.approx(16 * 3 / 8)
    assert reading.device.estimated and reading.device.kind == "ram"
    idle, full = float(PARAMS["error_tdp_idle"]), float(PARAMS["error_tdp_full"])
    assert relative_error(reading.device, reading.power_w) == pytest.approx((idle + full) / 2)
    with pytest.raises(ProbeUnavailable, match="MemTotal"):
        RamModelProbe(Paths(sysfs=tmp_path, procfs=tmp_path / "nowhere"), watts_per_gb=1)


def test_platform_is_per_socket_on_bare_metal_and_per_thread_in_a_guest(tmp_path: Path) -> None:
    paths = machine(tmp_path / "metal")
    probe = PlatformModelProbe(paths)
    p_idle, p_full = (float(PARAMS["platform_idle_w_per_socket"]),
                      float(PARAMS["platform_full_w_per_socket"]))
    assert probe.devices[0].kind == "platform" and probe.devices[0].estimated
    assert probe.devices[0].power_range_w == pytest.approx((2 * p_idle, 2 * p_full))
    set_stat(paths.procfs, busy=2000, idle=9000)  # all busy since
    assert probe.read().readings[0].power_w == pytest.approx(2 * p_full)
    guest = PlatformModelProbe(machine(tmp_path / "guest", sockets=1, threads=2, guest=True))
    assert guest.devices[0].power_range_w == pytest.approx(
        (2 * fig("intel-icelake", "platform_thread_idle_w"),
         2 * fig("intel-icelake", "platform_thread_full_w")))


def test_readers_of_one_estimate_each_measure_the_load_since_their_own_start(
        tmp_path: Path) -> None:
    """Two overlapping measurements share one discovered probe: each reader's load is over
    its own interval, and closing one leaves the others reading."""
    paths = machine(tmp_path)
    probe = CpuModelProbe(paths)
    lo, hi = probe.idle.parts["cpu"], probe.full.parts["cpu"]
    a = probe.reader()
    set_stat(paths.procfs, busy=1000 + 1000, idle=9000)  # a: all busy
    b = probe.reader()
    set_stat(paths.procfs, busy=2000, idle=9000 + 1000)  # a: half busy overall; b: idle
    assert a.read().readings[0].power_w == pytest.approx(lo + 0.5 * (hi - lo))
    assert b.read().readings[0].power_w == pytest.approx(lo)
    a.close()
    set_stat(paths.procfs, busy=2000 + 1000, idle=10_000 + 1000)
    assert b.read().readings[0].power_w == pytest.approx(lo + 0.5 * (hi - lo))
    assert probe.read().readings[0].power_w == pytest.approx(lo + (2000 / 4000) * (hi - lo))
    platform = PlatformModelProbe(paths).reader()
    set_stat(paths.procfs, busy=3000 + 1000, idle=11_000)
    assert platform.read().readings[0].power_w == pytest.approx(platform.full.parts["platform"])
