"""AMD CPU sockets through the ``amd_energy`` hwmon driver (Linux 5.10-5.12 in tree, AMD's
out-of-tree module since), for hosts where RAPL is not available through powercap.

The driver registers one hwmon chip named ``amd_energy`` whose channels are labelled
``Ecore000``, ``Ecore001``, ... (one per physical core) then ``Esocket0``, ``Esocket1``, ...
(one per socket), each ``energyN_input`` in µJ, mode 0440 (root only, as RAPL since
CVE-2020-8694). Cores are inside their socket: only the socket counters are read.

Counter width depends on the driver build. On the CPUs it lists as having 32-bit RAPL
registers it accumulates them into 64 bits in a kernel thread, so the value does not wrap in
practice. On the others it reports the register masked to 32 bits without accumulating, so
the value wraps at 2**32 energy units: 65,536 J at the 2**-16 J unit every Zen part reports
(about 4 minutes at 280 W). A counter seen above that range is therefore 64-bit; until one
is, the probe declares the 32-bit wrap so the exporter's accounting unwraps it. The width
is judged again at every read: one value above the range (a 64-bit counter passing it, or a
bad read) makes the next reading a 64-bit counter's, and a value within it a 32-bit one's;
a change of width is a change of counter, which the accounting takes as a reset, so a
single bad value never counts as energy nor leaves a 32-bit counter unwrapped.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import replace
from pathlib import Path

from carbonmeter.probes.base import (
    Device,
    Paths,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
)
from carbonmeter.probes.cpu_model import read_cpuinfo
from carbonmeter.probes.hwmon import Sensor, read_value, scan
from carbonmeter.probes.raw import BadValue

CHIP = "amd_energy"
_SOCKET = re.compile(r"Esocket(\d+)")
# 2**32 units of 2**-16 J, in µJ: where a masked 32-bit counter restarts from zero.
WRAP_32BIT_UJ = 2**32 * 1_000_000 // 2**16  # 65_536_000_000


class AmdEnergyProbe(Probe):
    """One device per socket: ``package-N``, named like RAPL's so dashboards carry over."""

    name = "amd_energy"
    may_block = False  # hwmon files of a CPU register: a read never waits
    covers = frozenset({"cpu"})

    def __init__(self, paths: Paths) -> None:
        chip = [s for s in scan(paths.sysfs) if s.chip == CHIP and s.quantity == "energy"]
        sockets = [s for s in chip if _SOCKET.fullmatch(s.label)]
        if chip and not sockets:  # labels are 0440 too: unreadable, or not this driver's
            label = chip[0].path.with_name(chip[0].path.name.replace("_input", "_label"))
            if not os.access(label, os.R_OK):
                raise ProbeUnavailable(self._root_only(label))
        if not sockets:
            raise ProbeUnavailable(
                f"no amd_energy hwmon chip under {Path(paths.sysfs) / 'class/hwmon'}: not an "
                "AMD EPYC/Ryzen host with the amd_energy module loaded (modprobe amd_energy)")
        model = read_cpuinfo(Path(paths.procfs))[0]
        self._sockets: list[tuple[Sensor, Device]] = []
        for s in sockets:
            try:
                value = read_value(s.path)
            except PermissionError as e:
                raise ProbeUnavailable(self._root_only(s.path)) from e
            except (OSError, ValueError) as e:
                raise ProbeUnavailable(f"cannot read {s.path}: {_why(e)}") from e
            n = _SOCKET.fullmatch(s.label).group(1)  # type: ignore[union-attr]
            device = Device(f"package-{n}", "cpu", self.name, name=model or s.label)
            self._sockets.append((s, _width(device, s, value)))

    @property
    def devices(self) -> tuple[Device, ...]:
        return tuple(d for _, d in self._sockets)

    @property
    def modes(self) -> dict[str, str]:
        return {d.id: f"{s.label}, {'64-bit' if d.wrap_uj is None else '32-bit (wraps at 65.5 kJ)'}"
                f" counter" for s, d in self._sockets}

    @staticmethod
    def _root_only(path: Path) -> str:
        return (f"{path} is readable by root only (the amd_energy driver makes its files 0440, "
                "as RAPL since CVE-2020-8694): run as root, or make them readable with a udev "
                "rule")

    def read(self) -> ProbeRead:
        readings: list[Reading] = []
        errors: list[str] = []
        for i, (s, d) in enumerate(self._sockets):
            try:
                value = read_value(s.path)
            except (OSError, ValueError) as e:
                errors.append(f"amd_energy {d.id}: cannot read {s.path}: {_why(e)}")
                continue
            if (d.wrap_uj is None) != (value > WRAP_32BIT_UJ):  # see the module's docstring
                d = _width(d, s, value)
                self._sockets[i] = (s, d)
            readings.append(Reading(d, counter_uj=value))
        return ProbeRead(readings, errors)

    def close(self) -> None:
        pass


def _width(d: Device, s: Sensor, value: int) -> Device:
    """`d` as a 64-bit counter when `value` is above the 32-bit range, else a 32-bit one."""
    wide = value > WRAP_32BIT_UJ
    return replace(d, wrap_uj=None if wide else WRAP_32BIT_UJ,
                   identity=f"{s.path} {'64' if wide else '32'}-bit")


def _why(e: Exception) -> str:
    if isinstance(e, BadValue):
        return f"not a believable value: {e}"
    if isinstance(e, OSError) and e.errno == errno.ENODEV:
        return "the socket's CPUs are offline"
    if isinstance(e, ValueError):
        return "not a number (driver unloaded?)"
    return (e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)


def _make(settings: None, ctx: ProbeContext) -> AmdEnergyProbe:
    return AmdEnergyProbe(ctx.paths)


# Where RAPL already measures the CPU, the driver's counters are the same registers.
SPEC = ProbeSpec("amd_energy", order=20, make=_make, replaces=frozenset({"cpu"}))
