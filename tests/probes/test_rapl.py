"""The RAPL probe against fake powercap trees that follow the kernel's layout and arithmetic.

Unwrapping is the exporter's job; here the raw counters and wrap_uj are checked against the
kernel's model, and the wrap convention is checked numerically with the accounting rule
``delta = raw + wrap_uj - prev if raw < prev else raw - prev``.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from carbonmeter.probes import rapl
from carbonmeter.probes.base import Device, Paths, ProbeUnavailable
from carbonmeter.probes.rapl import RaplProbe
from tests.fixtures.powercap import (
    DRAM_UNIT_UJ,
    EXACT_INTEL_UNIT_UJ,
    INTEL_UNIT_UJ,
    REGISTER,
    PowercapTree,
    client_with_subzones,
    multi_die,
    one_socket,
    two_sockets_with_dram,
    with_mmio_duplicate,
    with_psys,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def probes() -> Iterator[list[RaplProbe]]:
    """Probes made in a test, closed after it."""
    made: list[RaplProbe] = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def make(probes: list[RaplProbe]):
    def make(tree: PowercapTree, **kw: bool) -> RaplProbe:
        p = RaplProbe(Paths(sysfs=tree.root, procfs=tree.root / "proc"), **kw)
        probes.append(p)
        return p

    return make


def counters(probe: RaplProbe) -> dict[str, int | None]:
    result = probe.read()
    assert result.errors == []
    return {r.device.id: r.counter_uj for r in result.readings}


def wrap_of(tree: PowercapTree, zone: str) -> float:
    return tree.max_energy_range_uj(zone) * 2**32 / (2**32 - 1)


def unwrap(prev: int, raw: int, wrap_uj: float) -> float:
    """The exporter's rule, restated: the probe never does this."""
    return raw + wrap_uj - prev if raw < prev else raw - prev


# -- what is exported ----------------------------------------------------------------------------


def test_one_socket(tmp_path: Path, make) -> None:
    """intel-rapl:0 = package-0, reached through class/powercap symlinks as on a real host."""
    tree = one_socket(tmp_path)
    probe = make(tree)
    assert probe.name == "rapl"
    assert probe.devices == (
        Device("package-0", "cpu", "rapl", name="package-0", wrap_uj=wrap_of(tree, "intel-rapl:0"),
               identity=f"intel-rapl:0 max_energy_range_uj="
                        f"{tree.max_energy_range_uj('intel-rapl:0')} "
                        f"inode={tree.energy_path('intel-rapl:0').stat().st_ino}"),
    )
    assert probe.covers == frozenset({"cpu"})
    assert counters(probe) == {"package-0": tree.energy_uj("intel-rapl:0")}
    tree.advance("intel-rapl:0", 12.5)
    assert counters(probe) == {"package-0": tree.energy_uj("intel-rapl:0")}


def test_two_sockets_with_dram(tmp_path: Path, make) -> None:
    """Xeon: dram is subzone intel-rapl:N:0 of each package, with its own (DRAM) energy unit."""
    tree = two_sockets_with_dram(tmp_path)
    probe = make(tree)
    ids = {d.id: d for d in probe.devices}
    assert sorted(ids) == ["dram-0", "dram-1", "package-0", "package-1"]
    assert {d.kind for d in probe.devices} == {"cpu", "dram"}
    assert probe.covers == frozenset({"cpu", "dram"})
    assert ids["dram-1"].wrap_uj == wrap_of(tree, "intel-rapl:1:0")
    assert tree.max_energy_range_uj("intel-rapl:1:0") == int((REGISTER - 1) * DRAM_UNIT_UJ)
    tree.advance("intel-rapl:1:0", 3)
    tree.advance("intel-rapl:0", 40)
    assert counters(probe) == {
        "package-0": tree.energy_uj("intel-rapl:0"),
        "package-1": tree.energy_uj("intel-rapl:1"),
        "dram-0": tree.energy_uj("intel-rapl:0:0"),
        "dram-1": tree.energy_uj("intel-rapl:1:0"),
    }


def test_core_and_uncore_are_never_exported(tmp_path: Path, make) -> None:
    """Client parts: core (PP0) and uncore (PP1) subzones are already inside package-0."""
    probe = make(client_with_subzones(tmp_path))
    assert [d.id for d in probe.devices] == ["package-0"]
    assert probe.covers == frozenset({"cpu"})


def test_mmio_duplicate_is_dropped(tmp_path: Path, make) -> None:
    """intel-rapl-mmio:0 is package-0's register read through MMIO: counting it would double."""
    tree = with_mmio_duplicate(tmp_path)
    probe = make(tree)
    assert [d.id for d in probe.devices] == ["package-0"]
    tree.advance("intel-rapl:0", 1)
    assert counters(probe) == {"package-0": tree.energy_uj("intel-rapl-mmio:0")}


def test_mmio_alone_is_used(tmp_path: Path, make) -> None:
    """Without the MSR driver (intel_rapl_msr not loaded), the MMIO zone is the only source."""
    tree = PowercapTree(tmp_path)
    tree.add_zone("intel-rapl-mmio:0", name="package-0", start_ticks=10)
    assert counters(make(tree)) == {"package-0": tree.energy_uj("intel-rapl-mmio:0")}


def test_psys_only_when_configured(tmp_path: Path, make) -> None:
    """intel-rapl:1 = psys covers package + dram and more: it replaces them, never adds."""
    tree = with_psys(tmp_path)
    plain = make(tree)
    assert sorted(d.id for d in plain.devices) == ["dram-0", "package-0"]
    platform = make(tree, psys=True)
    assert platform.devices == (
        Device("psys", "platform", "rapl", name="psys", wrap_uj=wrap_of(tree, "intel-rapl:1"),
               identity=f"intel-rapl:1 max_energy_range_uj="
                        f"{tree.max_energy_range_uj('intel-rapl:1')} "
                        f"inode={tree.energy_path('intel-rapl:1').stat().st_ino}"),
    )
    assert platform.covers == frozenset({"cpu", "dram"})
    tree.advance("intel-rapl:1", 7)
    assert counters(platform) == {"psys": tree.energy_uj("intel-rapl:1")}


def test_psys_requested_but_missing_falls_back_with_a_warning(tmp_path: Path, make, caplog) -> None:
    tree = two_sockets_with_dram(tmp_path)
    with caplog.at_level(logging.WARNING, logger="carbonmeter.probes.rapl"):
        probe = make(tree, psys=True)
    assert sorted(d.id for d in probe.devices) == ["dram-0", "dram-1", "package-0", "package-1"]
    assert any("psys" in r.getMessage() for r in caplog.records)


def test_top_level_dram_zone(tmp_path: Path, make) -> None:
    """Some machines register dram as its own top-level zone (intel-rapl:1, name dram)."""
    tree = PowercapTree(tmp_path)
    tree.add_zone("intel-rapl:0", name="package-0")
    tree.add_zone("intel-rapl:1", name="dram", unit_uj=DRAM_UNIT_UJ)
    probe = make(tree)
    assert sorted(d.id for d in probe.devices) == ["dram-0", "package-0"]
    assert probe.covers == frozenset({"cpu", "dram"})


def test_die_mirrors_are_dropped_distinct_dies_kept(tmp_path: Path, make) -> None:
    """Kernels that report AMD CCDs as dies register package-0-die-N per die, all reading one
    package register; Cascade Lake-AP has one register per die."""
    mirrored = make(multi_die(tmp_path / "amd", dies=4))
    assert [d.id for d in mirrored.devices] == ["package-0"]
    distinct = make(multi_die(tmp_path / "clx", dies=2, mirrored=False))
    assert [d.id for d in distinct.devices] == ["package-0-die-0", "package-0-die-1"]


def test_cpu_model_names_the_package(tmp_path: Path, make) -> None:
    tree = one_socket(tmp_path)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\n"
        "model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz\n"
    )
    assert make(tree).devices[0].name == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"


# -- counters and the wrap convention ------------------------------------------------------------


def test_wrap_uj_of_the_documented_example(tmp_path: Path, make) -> None:
    """The kernel floors Intel's 2^-14 J unit to 61.035 µJ: max_energy_range_uj 262143328850."""
    tree = one_socket(tmp_path)
    assert tree.max_energy_range_uj("intel-rapl:0") == 262143328850
    assert make(tree).devices[0].wrap_uj == pytest.approx(262143328911.04, abs=0.01)


@pytest.mark.parametrize("unit", [INTEL_UNIT_UJ, EXACT_INTEL_UNIT_UJ, DRAM_UNIT_UJ])
def test_wrap_exactly_at_the_boundary(tmp_path: Path, make, unit: Fraction) -> None:
    """Register at 2^32-1 reads max_energy_range_uj; one more tick reads 0: one unit spent."""
    tree = PowercapTree(tmp_path)
    tree.add_zone("intel-rapl:0", name="package-0", unit_uj=unit, start_ticks=REGISTER - 1)
    probe = make(tree)
    wrap_uj = probe.devices[0].wrap_uj
    assert wrap_uj is not None
    before = counters(probe)["package-0"]
    assert before == tree.max_energy_range_uj("intel-rapl:0")
    tree.advance_ticks("intel-rapl:0", 1)
    after = counters(probe)["package-0"]
    assert after == 0
    assert before is not None and after is not None
    assert unwrap(before, after, wrap_uj) == pytest.approx(float(unit), abs=1)
    # Adding max_energy_range_uj alone (the common mistake) loses that unit entirely.
    assert after + tree.max_energy_range_uj("intel-rapl:0") - before == 0


@pytest.mark.parametrize("unit", [INTEL_UNIT_UJ, EXACT_INTEL_UNIT_UJ, DRAM_UNIT_UJ])
def test_many_wraps_sum_to_the_true_energy(tmp_path: Path, make, unit: Fraction) -> None:
    """150 kJ steps on a ~262 kJ (65 kJ for DRAM: 150 kJ is more than two wraps there, so the
    DRAM run uses 50 kJ) range: every wrap costs at most 1 µJ of flooring, never a unit."""
    step = Fraction("150000.123457") if unit != DRAM_UNIT_UJ else Fraction("50000.123457")
    tree = PowercapTree(tmp_path)
    tree.add_zone("intel-rapl:0", name="package-0", unit_uj=unit, start_ticks=987_654_321)
    probe = make(tree)
    wrap_uj = probe.devices[0].wrap_uj
    assert wrap_uj is not None
    prev = counters(probe)["package-0"]
    total = 0.0
    wraps = 0
    for _ in range(200):
        tree.advance("intel-rapl:0", step)
        raw = counters(probe)["package-0"]
        assert raw is not None and prev is not None
        assert 0 <= raw <= tree.max_energy_range_uj("intel-rapl:0")
        wraps += raw < prev
        total += unwrap(prev, raw, wrap_uj)
        prev = raw
    assert wraps == tree.wraps("intel-rapl:0") > 50
    true_uj = float(tree.true_energy_uj("intel-rapl:0"))
    assert abs(total - true_uj) <= wraps * 1.0 + 1
    naive_loss = wraps * (wrap_uj - tree.max_energy_range_uj("intel-rapl:0"))
    assert naive_loss > wraps * float(unit) - wraps  # what the max_energy_range_uj rule loses


# -- failures ------------------------------------------------------------------------------------


def test_eacces_at_discovery_is_one_actionable_line(tmp_path: Path, monkeypatch) -> None:
    """Since CVE-2020-8694 energy_uj is 0400 root: open() fails with EACCES for anyone else.
    Tests run as root, so the error is injected where the probe opens the file."""
    tree = two_sockets_with_dram(tmp_path)

    def denied(path: Path) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(rapl, "_open", denied)
    with pytest.raises(ProbeUnavailable) as e:
        RaplProbe(Paths(sysfs=tree.root))
    msg = str(e.value)
    assert "\n" not in msg
    assert str(tree.energy_path("intel-rapl:0")) in msg
    assert "root only" in msg and "CVE-2020-8694" in msg and "chmod o+r" in msg


def test_eacces_after_some_zones_opened_leaks_no_fd(tmp_path: Path, monkeypatch) -> None:
    tree = two_sockets_with_dram(tmp_path)
    real_open = rapl._open
    before = len(os.listdir("/proc/self/fd"))

    def second_denied(path: Path) -> int:
        if "intel-rapl:1" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path)

    monkeypatch.setattr(rapl, "_open", second_denied)
    with pytest.raises(ProbeUnavailable):
        RaplProbe(Paths(sysfs=tree.root))
    assert len(os.listdir("/proc/self/fd")) == before


_SCRIPT = """
import sys
from pathlib import Path
from carbonmeter.probes.base import Paths, ProbeUnavailable
from carbonmeter.probes.rapl import RaplProbe
try:
    probe = RaplProbe(Paths(sysfs=Path(sys.argv[1])))
except ProbeUnavailable as e:
    print(e)
    sys.exit(3)
print(probe.read().readings[0].counter_uj)
"""

_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _unprivileged_python() -> str | None:
    """An interpreter nobody can execute (a venv may point into root's home)."""
    for candidate in (sys.executable, shutil.which("python3")):
        if (
            candidate
            and subprocess.run([*_NOBODY, candidate, "-c", "pass"], capture_output=True).returncode
            == 0
        ):
            return candidate
    return None


def test_real_eacces_as_nobody() -> None:
    """The kernel's 0400 root-owned energy_uj, read by an unprivileged process."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges to nobody")
    python = _unprivileged_python()
    if python is None:
        pytest.skip("no Python interpreter that user nobody can execute")
    root = Path(tempfile.mkdtemp(prefix="carbonmeter-rapl-"))
    try:
        root.chmod(0o755)  # nobody must traverse the tree to reach the zone's files
        tree = one_socket(root)
        energy = tree.energy_path("intel-rapl:0")
        assert stat.S_IMODE(energy.stat().st_mode) == 0o400 and energy.stat().st_uid == 0
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*_NOBODY, python, "-c", _SCRIPT, str(root)],
                cwd="/",
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )

        denied = run()
        assert denied.returncode == 3, denied.stderr
        assert "root only" in denied.stdout and str(energy) in denied.stdout
        energy.chmod(0o444)  # control: the same tree readable is read, so mode was the cause
        allowed = run()
        assert allowed.returncode == 0, allowed.stdout + allowed.stderr
        assert int(allowed.stdout) == tree.energy_uj("intel-rapl:0")
    finally:
        shutil.rmtree(root)


def test_zone_disappearing_mid_run(tmp_path: Path, make) -> None:
    """Unregistering a zone (driver unload, hotplug) kills its open fd (ENODEV in sysfs; the
    fixture empties the file): that device is left out with one error line, others go on, and
    it is read again once the zone comes back."""
    tree = two_sockets_with_dram(tmp_path)
    probe = make(tree)
    assert len(probe.read().readings) == 4
    tree.remove_zone("intel-rapl:1:0")
    tree.advance("intel-rapl:0", 1)
    result = probe.read()
    assert sorted(r.device.id for r in result.readings) == ["dram-0", "package-0", "package-1"]
    assert {r.device.id: r.counter_uj for r in result.readings}["package-0"] == tree.energy_uj(
        "intel-rapl:0"
    )
    assert len(result.errors) == 1
    assert "dram-1" in result.errors[0] and "intel-rapl:1:0" in result.errors[0]
    tree.add_zone("intel-rapl:1:0", name="dram", unit_uj=DRAM_UNIT_UJ, start_ticks=5)
    assert counters(probe)["dram-1"] == tree.energy_uj("intel-rapl:1:0")


def test_package_disappearing_takes_its_subzones(tmp_path: Path, make) -> None:
    """The kernel removes a package zone with its subzones: one error line per device."""
    tree = two_sockets_with_dram(tmp_path)
    probe = make(tree)
    tree.remove_zone("intel-rapl:1")
    result = probe.read()
    assert sorted(r.device.id for r in result.readings) == ["dram-0", "package-0"]
    assert len(result.errors) == 2


def test_no_powercap_directory(tmp_path: Path) -> None:
    with pytest.raises(ProbeUnavailable) as e:
        RaplProbe(Paths(sysfs=tmp_path))
    msg = str(e.value)
    assert "\n" not in msg
    assert f"no RAPL zones under {tmp_path}/class/powercap" in msg and "VM" in msg


def test_control_type_without_zones(tmp_path: Path) -> None:
    """class/powercap/intel-rapl (no colon) is the control type, not a zone."""
    (tmp_path / "class" / "powercap" / "intel-rapl").mkdir(parents=True)
    with pytest.raises(ProbeUnavailable, match="no RAPL zones under"):
        RaplProbe(Paths(sysfs=tmp_path))


def test_masked_in_a_container(tmp_path: Path) -> None:
    """Docker masks /sys/devices/virtual/powercap: class/powercap links dangle."""
    tree = one_socket(tmp_path)
    tree.mask()
    with pytest.raises(ProbeUnavailable, match=r"dangling links.*bind-mount"):
        RaplProbe(Paths(sysfs=tree.root))


def test_close_releases_every_fd(tmp_path: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    probe = RaplProbe(Paths(sysfs=with_psys(tmp_path).root))
    # package-0 and dram-0, each energy_uj and max_energy_range_uj
    assert len(os.listdir("/proc/self/fd")) == before + 4
    probe.close()
    probe.close()
    assert len(os.listdir("/proc/self/fd")) == before


# -- the fixture reproduces the kernel -----------------------------------------------------------


def test_fixture_layout_matches_sysfs(tmp_path: Path) -> None:
    client_with_subzones(tmp_path)
    base = tmp_path / "class" / "powercap"
    for entry, real in [
        ("intel-rapl", "devices/virtual/powercap/intel-rapl"),
        ("intel-rapl:0", "devices/virtual/powercap/intel-rapl/intel-rapl:0"),
        ("intel-rapl:0:1", "devices/virtual/powercap/intel-rapl/intel-rapl:0/intel-rapl:0:1"),
    ]:
        assert (base / entry).is_symlink()
        assert not os.readlink(base / entry).startswith("/")  # relative, like sysfs
        assert (base / entry).resolve() == (tmp_path / real).resolve()
    zone = base / "intel-rapl:0"
    assert (zone / "name").read_text() == "package-0\n"
    assert stat.S_IMODE((zone / "energy_uj").stat().st_mode) == 0o400
    assert stat.S_IMODE((zone / "max_energy_range_uj").stat().st_mode) == 0o444


def test_fixture_updates_in_place_for_open_readers(tmp_path: Path) -> None:
    """The probe keeps energy_uj open and preads it: updates must hit the same inode."""
    tree = one_socket(tmp_path)
    path = tree.energy_path("intel-rapl:0")
    inode = path.stat().st_ino
    fd = os.open(path, os.O_RDONLY)
    try:
        for joules in (1, 10**6, 10**5):  # crosses digit counts and a wrap
            tree.advance("intel-rapl:0", joules)
            assert int(os.pread(fd, 32, 0)) == tree.energy_uj("intel-rapl:0")
        assert path.stat().st_ino == inode
    finally:
        os.close(fd)


@pytest.mark.parametrize("kw", [{"symlinks": False}, {"padded": False}])
def test_probe_reads_flat_trees_and_exact_kernel_text(tmp_path: Path, make, kw) -> None:
    """Plain directories in class/powercap; values written exactly as the kernel prints them."""
    tree = two_sockets_with_dram(tmp_path, **kw)
    if kw.get("padded") is False:
        assert tree.energy_path("intel-rapl:0").read_text() == f"{tree.energy_uj('intel-rapl:0')}\n"
    probe = make(tree)
    tree.advance("intel-rapl:1", 2)
    assert counters(probe)["package-1"] == tree.energy_uj("intel-rapl:1")
    assert len(probe.devices) == 4


def test_fixture_never_shows_a_torn_value_to_a_concurrent_reader(tmp_path: Path, make) -> None:
    """End-to-end tests advance the tree while an exporter reads it: every read must parse and
    only go forward (or wrap). pread/pwrite release the GIL, so the two really interleave."""
    tree = one_socket(tmp_path)
    probe = make(tree)
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            tree.advance("intel-rapl:0", 9_999.5)  # changes digit counts, wraps often

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        prev, wraps = counters(probe)["package-0"], 0
        for _ in range(5_000):
            raw = counters(probe)["package-0"]
            assert raw is not None and prev is not None
            wraps += raw < prev
            prev = raw
    finally:
        stop.set()
        thread.join()
    assert wraps <= tree.wraps("intel-rapl:0")
