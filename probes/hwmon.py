"""Power and energy sensors of Linux hwmon: ARM servers, AMD GPUs and APUs, NVIDIA Grace,
ACPI power meters.

Chips are ``<sysfs>/class/hwmon/hwmonN`` (links into ``devices/``), each with a ``name`` and
attribute files: ``powerM_input`` (instantaneous, µW), ``powerM_average`` (µW averaged over
``powerM_average_interval`` ms), ``energyM_input`` (cumulative µJ) and ``*_label``. Drivers
still registered the old way (``acpi_power_meter``, which NVIDIA Grace uses) keep ``name`` and
their attributes in ``hwmonN/device`` instead, and label a meter with ``powerM_oem_info``;
libsensors reads both layouts and so does this module.

A sensor is named ``CHIP/LABEL`` ("amdgpu/PPT", "power_meter/Grace Power Socket 0"). The
built-in table below says which sensors to read and as what kind of device, and which not
to read because they are inside (or contain) another one that is read: summing a rail with
the rail that contains it counts its energy twice. Unknown chips are listed, not read, until
configuration names their kind.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from carbonmeter.probes.base import (
    HOST,
    KINDS,
    Device,
    Paths,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
    limits,
)
from carbonmeter.probes.raw import S64_MAX, BadValue, decimal

log = logging.getLogger(__name__)

_ATTR = re.compile(r"(power|energy)(\d+)_(input|average)")

# (pattern, kind or None, why). First match wins. kind "host": a meter of the whole server.
# None: not read, for the reason given. `covers`: what a reading includes beyond its kind.
BUILT_IN: tuple[tuple[str, str | None, str], ...] = (
    ("amd_energy/*", None, "read by the amd_energy probe"),
    # NVIDIA Grace and Grace Hopper (ACPI power meters, one per rail and socket). Module ⊇
    # Grace (+ Hopper GPU and HBM on GH200) ⊇ CPU rail + SysIO rail + LPDDR5X memory.
    ("power_meter/Grace Power Socket *", "cpu", "Grace socket: CPU and SoC rails and memory"),
    ("power_meter/CPU Power Socket *", None, "inside Grace Power Socket (its CPU rail)"),
    ("power_meter/SysIO Power Socket *", None, "inside Grace Power Socket (its SoC rail)"),
    ("power_meter/Module Power Socket *", None,
     "contains Grace Power Socket and the GPU, which nvml measures"),
    ("power_meter/*", "host", "ACPI power meter: the whole server"),
    ("amdgpu/fastPPT", None, "the same power as slowPPT over a shorter window"),
    ("amdgpu/*", "gpu", "AMD GPU package power (on an APU: the whole package)"),
    ("nouveau/*", "gpu", "NVIDIA GPU (nouveau)"),
    ("xe/pkg", None, "inside xe/card"),
    ("xe/*", "gpu", "Intel discrete GPU"),
    ("i915/*", "gpu", "Intel discrete GPU"),
    ("zenpower/*", "cpu", "AMD Zen SVI2 rail"),
    ("fam15h_power/*", "cpu", "AMD family 15h/16h processor power"),
)
_COVERS_DRAM = ("power_meter/Grace Power Socket *",)


@dataclass(frozen=True)
class Sensor:
    """One power or energy attribute of one chip, as found in sysfs."""

    chip: str  # content of `name`
    label: str  # *_label, power*_oem_info, else the attribute's stem ("power1")
    quantity: str  # "power" or "energy"
    path: Path  # the file to read: power*_average, power*_input or energy*_input
    average_s: float | None  # averaging window of a power*_average, when the chip says

    @property
    def key(self) -> str:
        return f"{self.chip}/{self.label}"


def scan(sysfs: Path) -> list[Sensor]:
    """Every power and energy sensor of every chip, in a stable order (device path)."""
    base = Path(sysfs) / "class" / "hwmon"
    try:
        entries = os.listdir(base)
    except OSError:
        return []
    chips: list[tuple[str, Path]] = []
    for entry in entries:
        for d in (base / entry, base / entry / "device"):
            if (d / "name").is_file():
                chips.append((os.path.realpath(d), d))
                break
    sensors: list[Sensor] = []
    for _, d in sorted(chips):
        try:
            name = (d / "name").read_text().strip()
            files = set(os.listdir(d))
        except OSError as e:
            log.debug("hwmon: skipping %s: %s", d, e)
            continue
        channels: dict[tuple[str, int], set[str]] = {}
        for f in files:
            m = _ATTR.fullmatch(f)
            if m:
                channels.setdefault((m.group(1), int(m.group(2))), set()).add(m.group(3))
        for (quantity, n), kinds in sorted(channels.items()):
            stem = f"{quantity}{n}"
            # An average is smoother than one instantaneous sample of a long interval.
            attr = "average" if quantity == "power" and "average" in kinds else "input"
            label = (_text(d / f"{stem}_label", files) or _text(d / f"{stem}_oem_info", files)
                     or stem)
            window = _text(d / f"{stem}_average_interval", files) if attr == "average" else ""
            average_s = int(window) / 1000 if window.isdigit() else None
            sensors.append(Sensor(name, label, quantity, d / f"{stem}_{attr}", average_s))
    return sensors


def read_value(path: Path) -> int:
    """µW or µJ, as the kernel renders it (a long, or a long long); OSError, or ValueError
    (BadValue for what is not a decimal integer in range) when it cannot."""
    with open(path, "rb", buffering=0) as f:
        return decimal(f.read(32), S64_MAX)


def classify(key: str, *, include: Iterable[str] = (), exclude: Iterable[str] = (),
             kinds: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """(kind or None, why) for sensor `key`: configuration first, then the built-in table."""
    if _match(key, exclude):
        return None, "excluded by hwmon.exclude"
    for pattern, kind in (kinds or {}).items():
        if fnmatch.fnmatchcase(key, pattern):
            return kind, f"hwmon.kinds {pattern!r}"
    included = _match(key, include)
    for pattern, kind, why in BUILT_IN:
        if fnmatch.fnmatchcase(key, pattern):
            if kind is None and included:
                return "other", "hwmon.include (no kind in hwmon.kinds: other)"
            return kind, why
    if included:
        return "other", "hwmon.include (no kind in hwmon.kinds: other)"
    return None, ("unknown chip: to read it, give its kind in hwmon.kinds, e.g. "
                  f"{{{key!r}: platform}}")


class HwmonProbe(Probe):
    """The hwmon sensors the table or the configuration chooses; each one a device."""

    name = "hwmon"

    def __init__(self, paths: Paths, *, interval: float, include: Iterable[str] = (),
                 exclude: Iterable[str] = (), kinds: Mapping[str, str] | None = None,
                 measured: Mapping[str, str] | None = None) -> None:
        """`measured`: kinds already measured by an earlier probe (kind -> probe name);
        CPU and memory sensors for those are left out so nothing is counted twice."""
        sensors = scan(paths.sysfs)
        if not sensors:
            raise ProbeUnavailable(
                f"no hwmon power or energy sensor under {Path(paths.sysfs) / 'class/hwmon'}")
        self.skipped: list[tuple[str, str]] = []
        self.modes: dict[str, str] = {}
        self._sensors: list[tuple[Sensor, Device]] = []
        used: set[str] = set()
        for s in sensors:
            kind, why = classify(s.key, include=include, exclude=exclude, kinds=kinds)
            owner = (measured or {}).get(kind or "")
            if kind is None or (owner and kind in ("cpu", "dram")):
                self.skipped.append((s.key, why if kind is None else f"{kind} measured by "
                                     f"{owner}"))
                continue
            try:
                read_value(s.path)
            except (OSError, ValueError) as e:
                self.skipped.append((s.key, f"cannot read {s.path}: {_why(e)}"))
                continue
            device = _device(s, kind, interval, used)
            self._sensors.append((s, device))
            self.modes[device.id] = _mode(s, device)
        if not self._sensors:
            found = "; ".join(f"{k}: {why}" for k, why in self.skipped)
            raise ProbeUnavailable(f"no hwmon sensor to read ({found})")
        self.devices = tuple(d for _, d in self._sensors)
        covers = {d.kind for d in self.devices} - {"platform", "other"}
        if any(_match(s.key, _COVERS_DRAM) for s, _ in self._sensors):
            covers.add("dram")
        self.covers = frozenset(covers)

    def read(self) -> ProbeRead:
        readings: list[Reading] = []
        errors: list[str] = []
        for s, d in self._sensors:
            try:
                value = read_value(s.path)
            except (OSError, ValueError) as e:
                errors.append(f"hwmon {d.id}: cannot read {s.path}: {_why(e)}")
                continue
            if s.quantity == "energy":
                readings.append(Reading(d, counter_uj=value))
            else:
                readings.append(Reading(d, power_w=value / 1e6))
        return ProbeRead(readings, errors)

    def close(self) -> None:
        pass


def _device(s: Sensor, kind: str, interval: float, used: set[str]) -> Device:
    base = "-".join(re.findall(r"[a-z0-9]+", f"{s.chip} {s.label}".lower())) or "sensor"
    device_id, n = base, 1
    while device_id in used:  # two GPUs of one model: amdgpu-ppt, amdgpu-ppt-2
        n += 1
        device_id = f"{base}-{n}"
    used.add(device_id)
    # An average over a window as long as the sampling interval is the mean of that
    # interval (a rectangle); a shorter window is as good as an instantaneous sample.
    mean = s.average_s is not None and s.average_s >= interval
    if kind == "host":
        return Device(device_id, "platform", "hwmon", name=s.key, mean_power=mean, scope=HOST)
    return Device(device_id, kind, "hwmon", name=s.key, mean_power=mean)


def _mode(s: Sensor, d: Device) -> str:
    what = f"{s.key} {s.path.name}"
    if d.scope == HOST:
        what += ", the whole host"
    if s.quantity == "energy":
        return f"{what}, energy counter"
    window = f" over {s.average_s:g} s" if s.average_s is not None else ""
    return f"{what}, {'mean' if d.mean_power else 'sampled'} power{window}"


def _text(path: Path, files: set[str]) -> str:
    if path.name not in files:
        return ""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def _match(key: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _why(e: Exception) -> str:
    if isinstance(e, BadValue):
        return f"not a believable value: {e}"
    if isinstance(e, ValueError):
        return "not a number (sensor gone?)"
    return (e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)


KIND_CHOICES = (*KINDS, HOST)  # hwmon.kinds values; "host": a meter of the whole host


@dataclass(frozen=True)
class HwmonConfig:
    """Section `hwmon`: which sensors to read besides the built-in table, and their kinds."""

    include: list[str]
    exclude: list[str]
    kinds: dict[str, str] = field(**limits(values=KIND_CHOICES))


def _make(settings: HwmonConfig, ctx: ProbeContext) -> HwmonProbe:
    return HwmonProbe(ctx.paths, interval=ctx.interval, include=settings.include,
                      exclude=settings.exclude, kinds=settings.kinds,
                      measured=dict(ctx.measured))


SPEC = ProbeSpec("hwmon", order=30, make=_make, section="hwmon", settings=HwmonConfig)
