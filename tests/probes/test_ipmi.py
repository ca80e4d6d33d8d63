"""Whole-server power over IPMI DCMI: ipmitool's recorded outputs and errors from a fake
ipmitool on PATH (tests/fakes/fake_ipmitool.py), and the real ipmitool where there is no BMC."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from carbonmeter.probes.base import HOST, ProbeUnavailable
from carbonmeter.probes.ipmi import IpmiProbe
from tests.helpers import fake_executable, require

FAKES = Path(__file__).resolve().parents[1] / "fakes"


@pytest.fixture
def ipmitool(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_executable(bin_dir, "ipmitool", FAKES / "fake_ipmitool.py")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    watts = tmp_path / "watts"
    watts.write_text("220")
    monkeypatch.setenv("FAKE_IPMITOOL_WATTS", str(watts))
    monkeypatch.setenv("FAKE_IPMITOOL_CALLS", str(tmp_path / "calls"))

    def case(name: str) -> Path:
        monkeypatch.setenv("FAKE_IPMITOOL_CASE", name)
        return watts

    case("ok")
    return case


def test_the_instantaneous_reading_is_the_whole_host(ipmitool, tmp_path: Path) -> None:
    watts = ipmitool("ok")
    probe = IpmiProbe(args=["-I", "open"])
    (d,) = probe.devices
    assert (d.id, d.kind, d.source, d.scope, d.mean_power) == ("server", "platform", "ipmi",
                                                                HOST, False)
    watts.write_text("1234")
    result = probe.read()
    assert result.errors == [] and [r.power_w for r in result.readings] == [1234.0]
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["-I open dcmi power reading"] * 2


@pytest.mark.parametrize(("case", "message"), [
    ("nodev", r"/dev/ipmidev/0: No such file or directory: no local BMC interface; load the "
              r"drivers \(modprobe ipmi_si ipmi_devintf\)"),
    ("eacces", r"Permission denied: run as root"),
    ("invalid", r"the BMC does not give DCMI power readings \(DCMI request failed because: "
                r"Invalid command \(c1\)\)"),
    ("deactivated-zero", r"power measurement is deactivated"),
    ("zero", r"answers 0 W: it implements DCMI without a power meter"),
])
def test_errors_at_start_are_one_actionable_line(ipmitool, case: str, message: str) -> None:
    ipmitool(case)
    with pytest.raises(ProbeUnavailable, match=message) as e:
        IpmiProbe()
    assert "\n" not in str(e.value)


def test_openbmc_reads_deactivated_yet_measures(ipmitool) -> None:
    ipmitool("deactivated-openbmc")
    assert IpmiProbe().read().readings[0].power_w == 235.0


def test_a_bmc_that_stops_answering_is_an_error_not_a_hang(ipmitool) -> None:
    probe = IpmiProbe(timeout=0.5)
    ipmitool("hang")
    result = probe.read()
    assert result.readings == [] and result.errors == [
        "ipmi: ipmitool did not answer within 0.5 s (ipmi.timeout_seconds)"]
    ipmitool("ok")
    assert probe.read().readings[0].power_w == 220.0


def test_without_ipmitool(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ProbeUnavailable, match=r"ipmitool not found: install ipmitool"):
        IpmiProbe()


def test_the_real_ipmitool_on_a_machine_without_a_bmc() -> None:
    """The installed ipmitool, run for real: its own message when /dev/ipmi0 is absent."""
    require("ipmitool")
    if any(Path(p).exists() for p in ("/dev/ipmi0", "/dev/ipmi/0", "/dev/ipmidev/0")):
        pytest.skip("this machine has a BMC interface")
    with pytest.raises(ProbeUnavailable, match=r"^Could not open device at /dev/ipmi0.*no local "
                                               r"BMC interface"):
        IpmiProbe(command=shutil.which("ipmitool") or "ipmitool")


def test_without_a_bmc_device_node_ipmitool_is_not_run(ipmitool, tmp_path: Path) -> None:
    """The kernel's ipmi_devintf creates /dev/ipmi0 (or /dev/ipmi/0, /dev/ipmidev/0) where a
    BMC answers; without one, ipmitool's open interface can only fail (and costs ~25 ms):
    the probe says so without running it. A remote BMC (-H) needs no local node."""
    dev = tmp_path / "dev"
    dev.mkdir()
    calls = tmp_path / "calls"
    with pytest.raises(ProbeUnavailable, match=r"no local BMC interface \(.*ipmi0 absent\)"):
        IpmiProbe(devfs=dev)
    with pytest.raises(ProbeUnavailable, match="no local BMC interface"):
        IpmiProbe(devfs=dev, args=["-I", "open"])
    assert not calls.exists()
    IpmiProbe(devfs=dev, args=["-I", "lanplus", "-H", "bmc.example", "-U", "admin", "-E"])
    assert calls.read_text().splitlines() == [
        "-I lanplus -H bmc.example -U admin -E dcmi power reading"]
    for node in ("ipmi0", "ipmi/0", "ipmidev/0"):
        calls.unlink()
        nodes = tmp_path / node.replace("/", "-") / "dev"
        (nodes / node).parent.mkdir(parents=True, exist_ok=True)
        (nodes / node).touch()
        assert IpmiProbe(devfs=nodes).read().readings[0].power_w == 220.0
        assert calls.read_text().splitlines() == ["dcmi power reading"] * 2
