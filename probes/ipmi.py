"""Whole-server power from the BMC: ``ipmitool dcmi power reading`` (IPMI DCMI Get Power
Reading), run once per interval.

ipmitool prints, after an empty line::

        Instantaneous power reading:                   220 Watts
        Minimum during sampling period:                 88 Watts
        Maximum during sampling period:                516 Watts
        Average power reading over sample period:      221 Watts
        IPMI timestamp:                           Thu Feb 15 08:36:01 2024
        Sampling period:                          00000001 Seconds.
        Power reading state is:                   activated

The instantaneous reading is used and integrated by trapezoid (the "average" is over the
BMC's own period, which is not the exporter's interval). The BMC measures the server at its
power supplies, so the device is the host's total (scope host): per-component sources stay
as a breakdown and are not added to it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carbonmeter.probes.base import (
    HOST,
    Device,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
    limits,
)

_READING = re.compile(r"^\s*Instantaneous power reading:\s*(\d+)\s+Watts", re.M)
_STATE = re.compile(r"^\s*Power reading state is:\s*(\w+)", re.M)
_DCMI_FAILED = re.compile(r"DCMI request failed because: (.+)")


# The nodes the kernel's ipmi_devintf creates, as ipmitool's open interface tries them.
DEVICE_NODES = ("ipmi0", "ipmi/0", "ipmidev/0")


def local_interface(args: Sequence[str]) -> bool:
    """True when ipmitool would talk to this host's BMC through the kernel driver (its open
    interface, the default on Linux): no remote host (-H) and no other interface (-I)."""
    argv = list(args)
    if "-H" in argv:
        return False
    if "-I" in argv:
        i = argv.index("-I")
        return i + 1 < len(argv) and argv[i + 1] == "open"
    return True


class IpmiError(Exception):
    """A reading that failed; str() is one line a person can act on."""


def parse_reading(out: str) -> float:
    """Watts from ipmitool's output, or IpmiError saying why there are none."""
    m = _READING.search(out)
    if m is None:
        first = next((ln.strip() for ln in out.splitlines() if ln.strip()), "nothing")
        raise IpmiError(f"unexpected ipmitool output: {first}")
    watts = float(m.group(1))
    state = _STATE.search(out)
    if watts == 0 and state and state.group(1) == "deactivated":
        raise IpmiError("the BMC's power measurement is deactivated (Power reading state "
                        "is: deactivated) and reads 0 W")
    if watts == 0:
        # A running server never draws 0 W: BMCs that implement the command without a
        # meter answer 0. Some (OpenBMC) say "deactivated" yet fill in the reading.
        raise IpmiError("the BMC answers 0 W: it implements DCMI without a power meter")
    return watts


def explain(err: str, code: int) -> str:
    """One actionable line for ipmitool's error output."""
    text = err.strip()
    if "Could not open device" in text:
        if "Permission denied" in text:
            return f"{_last(text)}: run as root, or give carbonmeter's user access to it"
        return (f"{_last(text)}: no local BMC interface; load the drivers (modprobe ipmi_si "
                "ipmi_devintf) on a server with a BMC, or set ipmi.args for a remote one")
    m = _DCMI_FAILED.search(text)
    if m:
        return (f"the BMC does not give DCMI power readings (DCMI request failed because: "
                f"{m.group(1).strip()})")
    if "Unable to establish" in text or "Error: Unable" in text:
        return f"{_last(text)}: check ipmi.args (host, user) and IPMI_PASSWORD for -E"
    return _last(text) or f"ipmitool exited with status {code}"


class IpmiProbe(Probe):
    """The server as one device, ``server``, kind platform, the host's whole power."""

    name = "ipmi"
    covers = frozenset()  # a whole-host meter replaces no component source

    def __init__(self, *, command: str = "ipmitool", args: Sequence[str] = (),
                 timeout: float = 5.0, devfs: Path | None = None) -> None:
        exe = shutil.which(command)
        if exe is None:
            raise ProbeUnavailable(f"{command} not found: install ipmitool (apt-get install "
                                   "ipmitool) on a server with a BMC, or set ipmi.command")
        if devfs is not None and local_interface(args) and not any(
                (devfs / node).exists() for node in DEVICE_NODES):
            raise ProbeUnavailable(
                f"no local BMC interface ({devfs / DEVICE_NODES[0]} absent): load the drivers "
                "(modprobe ipmi_si ipmi_devintf) on a server with a BMC, or set ipmi.args for "
                "a remote one")
        self._argv = [exe, *args, "dcmi", "power", "reading"]
        self._timeout = timeout
        try:
            watts = self._reading()
        except IpmiError as e:
            raise ProbeUnavailable(str(e)) from e
        self.device = Device("server", "platform", self.name, name="BMC DCMI power reading",
                             scope=HOST)
        self.devices = (self.device,)
        self.modes = {"server": f"{watts:g} W at start; the whole host"}

    def read(self) -> ProbeRead:
        try:
            return ProbeRead([Reading(self.device, power_w=self._reading())], [])
        except IpmiError as e:
            return ProbeRead([], [f"ipmi: {e}"])

    def close(self) -> None:
        pass

    def _reading(self) -> float:
        try:
            done = subprocess.run(self._argv, capture_output=True, text=True,
                                  timeout=self._timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise IpmiError(f"ipmitool did not answer within {self._timeout:g} s "
                            "(ipmi.timeout_seconds)") from e
        except OSError as e:
            raise IpmiError(f"cannot run {self._argv[0]}: {e.strerror or e}") from e
        if done.returncode != 0:
            raise IpmiError(explain(done.stderr or done.stdout, done.returncode))
        return parse_reading(done.stdout)


def _last(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@dataclass(frozen=True)
class IpmiConfig:
    """Section `ipmi`: `ipmitool dcmi power reading`, locally or against a remote BMC."""

    command: str = field(**limits(check="path"))
    args: list[str]
    timeout_seconds: float = field(**limits(min=0.5, max=120))


def _make(settings: IpmiConfig, ctx: ProbeContext) -> IpmiProbe:
    return IpmiProbe(command=settings.command, args=settings.args,
                     timeout=settings.timeout_seconds, devfs=ctx.paths.devfs)


SPEC = ProbeSpec("ipmi", order=80, make=_make, section="ipmi", settings=IpmiConfig,
                 replaces=frozenset({HOST}))
