"""AMD: RAPL through powercap with per-die mirrors of the socket's register, and the
amd_energy hwmon driver's per-socket counters. Fixtures: tests/fixtures/powercap.py
(``amd_epyc``) and tests/fixtures/hwmon.py (``amd_energy_chip``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from carbonmeter.accounting import Accounting
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes import rapl
from carbonmeter.probes.amd_energy import WRAP_32BIT_UJ, AmdEnergyProbe
from carbonmeter.probes.base import Paths, ProbeUnavailable
from carbonmeter.probes.rapl import RaplProbe
from tests.fixtures.hwmon import HwmonTree, amd_energy_chip
from tests.fixtures.powercap import AMD_UNIT_UJ, REGISTER, PowercapTree, amd_epyc, multi_die

REPO = Path(__file__).resolve().parents[2]
INTENSITY = Intensity(100.0, "test", "config", "test")


def rapl_probe(tree: PowercapTree) -> RaplProbe:
    return RaplProbe(Paths(sysfs=tree.root, procfs=tree.root / "proc"))


def test_epyc_dies_mirroring_the_socket_count_once(tmp_path: Path) -> None:
    tree = amd_epyc(tmp_path, sockets=2, dies=4)
    p = rapl_probe(tree)
    try:
        assert [d.id for d in p.devices] == ["package-0", "package-1"]
        # AMD's unit: the register wraps after 2**32 × 15.258 µJ ≈ 65.5 kJ
        assert p.devices[0].wrap_uj == pytest.approx(
            float((REGISTER - 1) * AMD_UNIT_UJ) * REGISTER / (REGISTER - 1))
        acc = Accounting(1.0)
        # crosses a 65.5 kJ wrap, a reading every 2 minutes at 250 W
        for t, joules in enumerate((0, 30_000, 30_000, 30_000)):
            tree.advance("intel-rapl:0", joules)
            tree.advance("intel-rapl:4", joules / 10)
            for r in p.read().readings:
                acc.add(r, 120.0 * t, INTENSITY)
        totals = {t.device.id: t.energy_j for t in acc.totals()}
        assert tree.wraps("intel-rapl:0") == 1
        assert totals["package-0"] == pytest.approx(90_000, abs=0.01)  # once, not four times
        assert totals["package-1"] == pytest.approx(9_000, abs=0.01)
    finally:
        p.close()


def test_mirrors_are_found_when_the_register_ticks_between_two_reads(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """A read of the dies is not atomic: the socket's register ticks about every
    millisecond, so die 1 may be read after a tick that die 0 missed. Several rounds are
    read; any round in which they agree shows they are one register."""
    tree = amd_epyc(tmp_path, sockets=1, dies=2)
    real = rapl._peek
    peeks = {"n": 0}

    def ticking(zone):
        peeks["n"] += 1
        if peeks["n"] <= 8:  # the first four rounds each straddle a tick
            tree.advance_ticks("intel-rapl:0", 3)
        return real(zone)

    monkeypatch.setattr(rapl, "_peek", ticking)
    p = rapl_probe(tree)
    try:
        assert [d.id for d in p.devices] == ["package-0"]
    finally:
        p.close()


def test_distinct_dies_reading_zero_are_not_taken_for_mirrors(tmp_path: Path) -> None:
    """Two dies with their own registers that both read 0 (just reset) agree by chance."""
    tree = multi_die(tmp_path, dies=2, mirrored=False)
    tree.advance_ticks("intel-rapl:0", REGISTER - 7_000)  # wrap die 0 to exactly 0
    tree.advance_ticks("intel-rapl:1", REGISTER - 7_999)
    assert tree.energy_uj("intel-rapl:0") == tree.energy_uj("intel-rapl:1") == 0
    p = rapl_probe(tree)
    try:
        assert [d.id for d in p.devices] == ["package-0-die-0", "package-0-die-1"]
    finally:
        p.close()


# -- amd_energy ------------------------------------------------------------------------------


def amd_probe(tree: HwmonTree) -> AmdEnergyProbe:
    return AmdEnergyProbe(Paths(sysfs=tree.root, procfs=tree.root / "proc"))


def test_amd_energy_reads_sockets_never_cores(tmp_path: Path) -> None:
    tree = HwmonTree(tmp_path)
    amd_energy_chip(tree, cores=4, sockets=2, socket_uj=(123_456_789_012, 98_765_432_101))
    p = amd_probe(tree)
    assert [(d.id, d.kind, d.source) for d in p.devices] == [
        ("package-0", "cpu", "amd_energy"), ("package-1", "cpu", "amd_energy")]
    assert [r.counter_uj for r in p.read().readings] == [123_456_789_012, 98_765_432_101]
    assert all(d.wrap_uj is None for d in p.devices)  # above 32 bits: accumulated, 64-bit


def test_amd_energy_32_bit_counters_are_unwrapped(tmp_path: Path) -> None:
    """Builds that do not accumulate report the register masked to 32 bits, wrapping at
    65,536 J; the first value above that range shows the counter is 64-bit after all."""
    tree = HwmonTree(tmp_path)
    chip = amd_energy_chip(tree, cores=2, sockets=1, socket_uj=(65_000_000_000,))
    p = amd_probe(tree)
    assert p.devices[0].wrap_uj == WRAP_32BIT_UJ == 65_536_000_000
    acc = Accounting(1.0)
    for t, value in enumerate((65_000_000_000, 400_000_000)):  # wrapped: +936 J
        tree.set(chip, "energy3_input", value)
        for r in p.read().readings:
            acc.add(r, float(t), INTENSITY)
    assert acc.totals()[0].energy_j == pytest.approx(936.0)
    tree.set(chip, "energy3_input", 70_000_000_000)
    (r,) = p.read().readings
    assert r.device.wrap_uj is None and p.devices[0].wrap_uj is None


def test_amd_energy_absent(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable, match="modprobe amd_energy"):
        amd_probe(HwmonTree(tmp_path))


def test_amd_energy_is_root_only_as_its_driver_makes_it() -> None:
    """energy*_input is 0440 root: an unprivileged process gets one actionable line."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to drop privileges to nobody")
    root = Path(tempfile.mkdtemp(prefix="carbonmeter-amd-"))
    try:
        root.chmod(0o755)
        amd_energy_chip(HwmonTree(root))
        for d in root.rglob("*"):
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o755)
        script = ("import sys\nfrom pathlib import Path\n"
                  "from carbonmeter.probes.base import Paths, ProbeUnavailable\n"
                  "from carbonmeter.probes.amd_energy import AmdEnergyProbe\ntry:\n"
                  "    AmdEnergyProbe(Paths(sysfs=Path(sys.argv[1])))\nexcept ProbeUnavailable"
                  " as e:\n    print(e)\n")
        out = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              sys.executable, "-c", script, str(root)], cwd="/",
                             env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]},
                             capture_output=True, text=True, timeout=60)
        if "Permission denied" in out.stderr and "python" in out.stderr:
            pytest.skip("user nobody cannot run this Python interpreter")
        assert "readable by root only" in out.stdout and "amd_energy" in out.stdout, out.stderr
    finally:
        shutil.rmtree(root)
