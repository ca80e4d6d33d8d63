"""CPU package, DRAM and platform (psys) energy from Linux powercap sysfs (Intel and AMD RAPL).

Zones are found in ``<sysfs>/class/powercap`` (links into ``devices/virtual/powercap``):
``intel-rapl:N`` (package-N, psys, or on some machines a top-level dram), subzones
``intel-rapl:N:M`` (core, uncore, dram) and the same registers seen through other interfaces
(``intel-rapl-mmio:N``, ``intel-rapl-tpmi:N``). A probe reports raw counters; the exporter's
accounting unwraps and integrates them.

What a zone says is checked at every read: ``energy_uj`` must be a decimal integer within
``max_energy_range_uj`` (read again each time, so a changed range is seen), and the file must
be the one opened before: a zone re-registered under the same name (driver reload, CPU
hotplug) is a new counter, with a new identity, which the accounting takes as a reset. Zones
that appear while the exporter runs are picked up at the next read.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from dataclasses import dataclass, replace
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
from carbonmeter.probes.raw import U64_MAX, BadValue, decimal

log = logging.getLogger(__name__)

# THE WRAP CONVENTION: on real hardware, energy_uj is a 32-bit hardware register
# (MSR_PKG_ENERGY_STATUS etc.) multiplied by the energy unit (e.g. 61.035156 µJ on Intel:
# 1/2^14 J) and floored to µJ; max_energy_range_uj is the value at the register's largest count,
# floor((2^32-1) × unit). So one complete wrap is 2^32 units, i.e. one energy unit MORE than
# max_energy_range_uj: wrap_uj = max_energy_range_uj × 2^32 / (2^32 − 1) (a float; e.g.
# 262143328850 -> 262143328911.04 µJ, true 262143328911.36). Tools that add max_energy_range_uj
# alone lose one unit (~61 µJ) per wrap. The exporter's accounting (not the probe) unwraps: if
# raw < previous raw, delta = raw + wrap_uj − previous. The probe only reports raw counter_uj
# (int) and wrap_uj.
_REGISTER = 2**32

_ZONE = re.compile(r"(intel-rapl(?:-[a-z]+)?):(\d+)(?::(\d+))?")  # "intel-rapl" alone: ignored
_PACKAGE = re.compile(r"package-(\d+)(-die-\d+)?")
_PRIMARY = "intel-rapl"  # the MSR interface; others duplicate it where both exist
_GONE = (errno.ENOENT, errno.ENODEV, errno.ENXIO, errno.ESTALE)
# Seconds between two looks for zones registered since (a listdir: as long as reading four
# zones, so not at every read).
PICKUP_S = 5.0


def _open(path: Path) -> int:
    """Every energy_uj is opened here, so tests can inject EACCES (they run as root)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _read_uj(fd: int, top: int = U64_MAX) -> int:
    """One syscall per read: sysfs renders the whole value at offset 0. BadValue for what
    is not a decimal integer up to `top`; ValueError on b"" (a zone removed under an open
    fd)."""
    return decimal(os.pread(fd, 32, 0), top)


@dataclass(eq=False)
class _Zone:
    entry: str  # directory name under class/powercap: "intel-rapl:0:1"
    ctype: str  # control type: "intel-rapl", "intel-rapl-mmio", ...
    index: tuple[int, ...]
    name: str  # content of its name file: "package-0", "dram", "psys", ...
    dir: Path
    max_range_uj: int
    parent: _Zone | None = None
    device: Device | None = None
    fd: int | None = None  # energy_uj
    range_fd: int | None = None  # max_energy_range_uj
    inode: int | None = None  # of energy_uj: another one is another registration of the zone

    @property
    def energy_path(self) -> Path:
        return self.dir / "energy_uj"


class RaplProbe(Probe):
    """Packages and DRAM, or psys alone: never a zone together with one it contains."""

    name = "rapl"
    may_block = False  # powercap values are CPU registers: a read never waits

    def __init__(self, paths: Paths, *, psys: bool = False) -> None:
        self._base = Path(paths.sysfs) / "class" / "powercap"
        self._psys = psys
        self._listed = set(_listdir(self._base))
        self._looked = time.monotonic()
        self._unreadable: set[str] = set()  # zones that appeared, could not be read, warned
        zones = _dedupe(self._scan())
        chosen = self._choose(zones, psys)
        if not chosen:
            raise ProbeUnavailable(self._unavailable(zones))
        self._zones = self._open_all(chosen)
        self._model = _cpu_model(Path(paths.procfs))
        top_drams = [z for z in self._zones if z.name == "dram" and z.parent is None]
        for z in self._zones:
            z.device = _device(z, self._model, top_drams)
        self._devices = tuple(z.device for z in self._zones if z.device)
        kinds = {d.kind for d in self._devices}
        self._covers = frozenset({"cpu", "dram"} if kinds & {"dram", "platform"} else {"cpu"})

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    @property
    def covers(self) -> frozenset[str]:
        return self._covers

    def read(self) -> ProbeRead:
        readings: list[Reading] = []
        errors: list[str] = []
        self._pick_up()
        for z in self._zones:
            try:
                value = self._read_zone(z)
                assert z.device is not None
                readings.append(Reading(z.device, counter_uj=value))
            except (OSError, ValueError) as e:
                assert z.device is not None
                errors.append(f"rapl {z.device.id}: cannot read {z.energy_path}: {_why(e)}")
        return ProbeRead(readings, errors)

    def close(self) -> None:
        _close_all(self._zones)

    # -- reading --------------------------------------------------------------------------------

    def _read_zone(self, z: _Zone) -> int:
        """Reuse the open fds; when they fail, reopen once, as the zone may have been
        re-registered (driver reload, CPU hotplug) and the old fds are dead. A value that
        cannot be true is an error for this read, whatever the fd."""
        if z.fd is not None:
            try:
                return self._value(z)
            except BadValue:
                raise
            except (OSError, ValueError):
                _close_all([z])
        self._open_zone(z)
        return self._value(z)

    @staticmethod
    def _value(z: _Zone) -> int:
        """energy_uj, within max_energy_range_uj as read now; a new range is a new device
        (another wrap and identity: the accounting restarts the counter's baseline)."""
        assert z.fd is not None and z.range_fd is not None
        top = _read_uj(z.range_fd)
        if top == 0:
            raise BadValue("max_energy_range_uj is 0")
        if top != z.max_range_uj:
            log.warning("rapl: %s: max_energy_range_uj changed from %d to %d µJ", z.entry,
                        z.max_range_uj, top)
            z.max_range_uj = top
            z.device = _renew(z)
        return _read_uj(z.fd, top)

    @staticmethod
    def _open_zone(z: _Zone) -> int:
        """Open the zone's files (energy_uj first: that is where permission fails) and read
        its counter once; a file that is not the one read before is a new registration."""
        z.fd = _open(z.energy_path)
        z.range_fd = os.open(z.dir / "max_energy_range_uj", os.O_RDONLY | os.O_CLOEXEC)
        inode = os.fstat(z.fd).st_ino
        if z.inode is not None and inode != z.inode:
            log.warning("rapl: %s was registered again (its energy_uj is a new file): a new "
                        "counter", z.entry)
        z.inode = inode
        if z.device is not None:
            z.device = _renew(z)
        return _read_uj(z.fd)

    # -- zones that appear ----------------------------------------------------------------------

    def _pick_up(self) -> None:
        """Zones registered since the last look (a CPU brought online, a driver loaded late)
        join the probe, chosen by the rules discovery uses; otherwise one listdir every
        PICKUP_S."""
        now = time.monotonic()
        if now - self._looked < PICKUP_S:
            return
        self._looked = now
        listed = set(_listdir(self._base))
        if listed <= self._listed:
            self._listed = listed
            return
        self._listed = listed
        known = {z.entry for z in self._zones}
        ids = {d.id for d in self._devices}
        fresh = [z for z in self._choose(_dedupe(self._scan()), self._psys, quiet=True)
                 if z.entry not in known]
        opened = []
        for z in fresh:
            try:
                self._open_zone(z)
                opened.append(z)
            except (OSError, ValueError) as e:  # perhaps half registered: try again later
                _close_all([z])
                self._listed.discard(z.entry)
                if z.entry not in self._unreadable:
                    log.warning("rapl: zone %s appeared but cannot be read: %s", z.entry,
                                _why(e))
                self._unreadable.add(z.entry)
        for z in _drop_die_mirrors(opened):
            drams = [x for x in [*self._zones, z] if x.name == "dram" and x.parent is None]
            z.device = _device(z, self._model, drams)
            if z.device.id in ids:  # another interface of a zone read already
                _close_all([z])
                continue
            log.info("rapl: zone %s appeared: reading it as %s", z.entry, z.device.id)
            self._zones.append(z)
            ids.add(z.device.id)
        self._devices = tuple(z.device for z in self._zones if z.device)

    # -- discovery ------------------------------------------------------------------------------

    def _scan(self) -> list[_Zone]:
        try:
            entries = os.listdir(self._base)
        except OSError:
            entries = []
        found: dict[str, _Zone] = {}
        for entry in sorted(entries, key=_sort_key):
            m = _ZONE.fullmatch(entry)
            if not m:
                continue
            d = self._base / entry
            try:
                name = (d / "name").read_text().strip()
                max_range = int((d / "max_energy_range_uj").read_text())
            except (OSError, ValueError) as e:  # a dangling link: masked in a container
                log.debug("rapl: skipping %s: %s", d, e)
                continue
            index = tuple(int(i) for i in m.groups()[1:] if i is not None)
            parent = found.get(entry.rsplit(":", 1)[0]) if len(index) == 2 else None
            if len(index) == 2 and parent is None:
                continue
            found[entry] = _Zone(entry, m.group(1), index, name, d, max_range, parent)
        return list(found.values())

    def _open_all(self, chosen: list[_Zone]) -> list[_Zone]:
        """Open every zone once: permission is all or nothing, a broken zone is left out."""
        opened: list[_Zone] = []
        failures: list[str] = []
        try:
            for z in chosen:
                try:
                    self._open_zone(z)
                    opened.append(z)
                except PermissionError as e:
                    raise ProbeUnavailable(self._permission_line(z)) from e
                except (OSError, ValueError) as e:
                    _close_all([z])
                    failures.append(f"{z.energy_path}: {_why(e)}")
                    log.warning("rapl: leaving out %s", failures[-1])
            opened = _drop_die_mirrors(opened)
        except BaseException:
            _close_all(chosen)
            raise
        if not opened:
            raise ProbeUnavailable(f"cannot read any RAPL energy_uj: {failures[0]}")
        return opened

    def _choose(self, zones: list[_Zone], psys: bool, quiet: bool = False) -> list[_Zone]:
        """Containment: core/uncore ⊂ package (never exported); package + dram ⊆ psys."""
        top = [z for z in zones if z.parent is None]
        if psys:
            platform = [z for z in top if z.name == "psys"]
            if platform:
                return platform[:1]
            log.log(logging.DEBUG if quiet else logging.WARNING,
                "rapl: psys requested but %s has no psys zone; reporting packages and DRAM instead",
                self._base,
            )
        packages = [z for z in top if _PACKAGE.fullmatch(z.name)]
        drams = [
            z for z in zones if z.name == "dram" and (z.parent is None or z.parent in packages)
        ]
        return packages + drams

    def _permission_line(self, z: _Zone) -> str:
        pattern = self._base / f"{z.ctype}:*" / "energy_uj"
        return (
            f"RAPL {z.energy_path} is readable by root only (since CVE-2020-8694): run as "
            f"root, or make it readable with a udev rule or `chmod o+r {pattern}`; in a "
            "container, run as root with /sys/class/powercap bind-mounted read-only"
        )

    def _unavailable(self, zones: list[_Zone]) -> str:
        if zones:
            names = ", ".join(sorted({z.name for z in zones}))
            return f"no RAPL package, dram or psys zone under {self._base} (found only: {names})"
        if any(_ZONE.fullmatch(e) for e in _listdir(self._base)):
            return (
                f"RAPL zones under {self._base} are dangling links: a container masks "
                "/sys/devices/virtual/powercap (Docker does since CVE-2020-8694); "
                "bind-mount it read-only into the container, or run on the host"
            )
        return (
            f"no RAPL zones under {self._base}: not an Intel/AMD CPU with the "
            "intel_rapl_msr/rapl driver loaded, or a VM that does not expose RAPL"
        )


def _counter(z: _Zone) -> dict[str, float | str]:
    """What makes a zone's raw value continue an earlier one: its range (see THE WRAP
    CONVENTION), name and registration (the inode of its energy_uj)."""
    return {"wrap_uj": z.max_range_uj * _REGISTER / (_REGISTER - 1),
            "identity": f"{z.entry} max_energy_range_uj={z.max_range_uj} inode={z.inode}"}


def _renew(z: _Zone) -> Device:
    assert z.device is not None
    return replace(z.device, **_counter(z))  # type: ignore[arg-type]


def _device(z: _Zone, model: str, top_drams: list[_Zone]) -> Device:
    common = {**_counter(z), "max_power_w": _max_power_w(z.dir)}
    if z.name == "psys":
        return Device("psys", "platform", "rapl", name="psys", **common)
    if z.name == "dram":
        if z.parent is None:  # a top-level dram zone: the k-th belongs to package k
            dram_id = f"dram-{top_drams.index(z)}"
        else:  # "package-0" -> "dram-0", "package-0-die-1" -> "dram-0-die-1"
            dram_id = "dram" + z.parent.name.removeprefix("package")
        return Device(dram_id, "dram", "rapl", name="dram", **common)
    return Device(z.name, "cpu", "rapl", name=model or z.name, **common)


def _max_power_w(zone_dir: Path) -> float | None:
    """Twice the largest power the zone's hardware advertises (constraint_N_max_power_uw,
    from MSR_PKG_POWER_INFO and its DRAM/platform equivalents), or None when it advertises
    none (0 or absent, as on many DRAM zones). Power limits are not used: an administrator
    sets them and may disable them, so they bound nothing."""
    best = 0
    for path in zone_dir.glob("constraint_*_max_power_uw"):
        try:
            best = max(best, int(path.read_text()))
        except (OSError, ValueError):
            continue
    return 2 * best / 1e6 if best > 0 else None


def _dedupe(zones: list[_Zone]) -> list[_Zone]:
    """One register may appear through several interfaces (MSR, MMIO, TPMI) under one name:
    keep the MSR zone, others only for names it lacks."""
    kept: dict[tuple[str, ...], _Zone] = {}
    for z in sorted(zones, key=lambda z: (z.ctype != _PRIMARY, z.ctype, z.index)):
        key = (z.parent.name, z.name) if z.parent else (z.name,)
        if key in kept:
            log.debug("rapl: %s duplicates %s", z.entry, kept[key].entry)
        elif z.parent is None or any(z.parent is k for k in kept.values()):
            kept[key] = z
    return sorted(kept.values(), key=lambda z: (z.ctype != _PRIMARY, z.ctype, z.index))


_MIRROR_ROUNDS = 5


def _drop_die_mirrors(zones: list[_Zone]) -> list[_Zone]:
    """Some kernels register a package-scoped register once per die (AMD Zen, whose CCDs the
    kernel reports as dies since its 6.x topology code): die zones of one package that read
    the same counter are one device, kept once as package-N. The dies are read together a
    few rounds: mirrors agree in a round unless the register ticks (every ~1 ms) between two
    reads a few µs apart, so agreement in any round proves a mirror; distinct registers (each
    die its own, e.g. Cascade Lake-AP) count from different starts and never agree, except
    all at zero, which proves nothing and is not taken as agreement."""
    groups: dict[str, list[_Zone]] = {}
    for z in zones:
        m = _PACKAGE.fullmatch(z.name)
        if m and m.group(2) and z.parent is None:
            groups.setdefault(m.group(1), []).append(z)
    dropped: set[_Zone] = set()
    for pkg, dies in groups.items():
        mirrored = len(dies) == 1 or any(_mirrored([_peek(z) for z in dies])
                                         for _ in range(_MIRROR_ROUNDS))
        if mirrored:
            dies[0].name = f"package-{pkg}"
            dropped.update(dies[1:])
    dropped.update([z for z in zones if z.parent in dropped])
    _close_all(list(dropped))
    return [z for z in zones if z not in dropped]


def _mirrored(values: list[int | None]) -> bool:
    return None not in values and len(set(values)) == 1 and values[0] != 0


def _peek(z: _Zone) -> int | None:
    try:
        return _read_uj(z.fd) if z.fd is not None else None
    except (OSError, ValueError):
        return None


def _close_all(zones: list[_Zone]) -> None:
    for z in zones:
        for fd in (z.fd, z.range_fd):
            if fd is not None:
                os.close(fd)
        z.fd = z.range_fd = None


def _why(e: Exception) -> str:
    if isinstance(e, BadValue):
        return f"not a believable value: {e}"
    if isinstance(e, ValueError) or (isinstance(e, OSError) and e.errno in _GONE):
        return "zone is gone (driver unloaded or CPU offlined?)"
    return (e.strerror if isinstance(e, OSError) and e.strerror else None) or str(e)


def _sort_key(entry: str) -> tuple[str, tuple[int, ...]]:
    ctype, _, rest = entry.partition(":")
    return ctype, tuple(int(i) for i in rest.split(":") if i.isdigit())


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _cpu_model(procfs: Path) -> str:
    """The package's human name; every socket of a machine carries the same model."""
    try:
        with open(procfs / "cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return ""


@dataclass(frozen=True)
class RaplConfig:
    """Section `rapl`."""

    psys: bool  # the platform zone instead of package + DRAM, where the CPU has one


def _make(settings: RaplConfig, ctx: ProbeContext) -> RaplProbe:
    return RaplProbe(ctx.paths, psys=settings.psys)


SPEC = ProbeSpec("rapl", order=10, make=_make, section="rapl", settings=RaplConfig)
