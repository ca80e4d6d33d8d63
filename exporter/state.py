"""The state file: totals checkpointed to disk and restored at start.

It holds each device's track (exporter/accounting.py), and, when they run, the workload
ledger (exporter/attribution/ledger.py) and the embodied totals, all taken under the
sampler's lock so that they describe the same sample.

A checkpoint is written whole to a temporary file in the same directory, fsynced,
renamed over the old one and the directory fsynced, so after a crash or power loss
the file is the previous checkpoint or the new one, never a mixture. A file that
cannot be trusted (truncated, garbage, written by a newer carbonmeter or on another
machine, a number out of range) is renamed aside with the reason logged, and the exporter
starts from zero.

The file is owned: an exclusive lock (flock on a lock file beside it, which names the
holder's PID) is held for the exporter's life, so a second exporter given the same file
refuses to start rather than overwrite the first one's totals; and only a regular file (or
none) is read or replaced, so a path naming a device or a FIFO is refused, never read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
MAX_BYTES = 16 << 20  # 10,000 workload series on five kinds of device take about 5 MB
MAX_DEPTH = 16  # the file nests 7 deep (attribution.workloads[i].series.kind[j])
# No total reaches this: 1e15 J is 100 kW for 300 years, and its grams at 5,000 g/kWh and
# a PUE of 10 stay below it too.
MAX_TOTAL = 1e15
MAX_COUNTER_UJ = (2**64 - 1) * 1000  # the widest raw counter a probe keeps (NVML's, in µJ)
MAX_SECONDS = 1e11  # seconds: unix times, clock times, unmeasured time (3,000 years)
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


@dataclass(frozen=True)
class Restored:
    """What a state file held: who wrote it, when, each device's track, and the workload
    ledger and embodied totals where they were kept."""

    boot_id: str
    written_unix: float
    devices: list[dict[str, Any]]
    attribution: dict[str, Any] | None = None
    embodied: dict[str, float] = field(default_factory=dict)
    machine_id: str = ""  # "" in files written before carbonmeter recorded it


class StateError(ValueError):
    """Why a state file cannot be used, in words for the log."""


class StateRefused(Exception):
    """The state file cannot be owned (held by another exporter, not a regular file): one
    line naming the file, and the exporter does not start. `config`: the configuration is
    wrong (state.path names something that is not a file), not the moment."""

    def __init__(self, message: str, *, config: bool = False) -> None:
        super().__init__(message)
        self.config = config


def machine_id(files: tuple[str, ...] = MACHINE_ID_FILES) -> str:
    """This host's machine id (systemd's, or D-Bus's on hosts without systemd); "" where
    there is none, and then a state file's origin cannot be checked."""
    for name in files:
        try:
            with open(name, "rb") as f:
                text = f.read(64).decode("ascii", "replace").strip()
        except OSError:
            continue
        if text:
            return text
    return ""


def boot_id(procfs: Path) -> str:
    """The kernel's random id of this boot; "" where it cannot be read (then no
    checkpoint is ever taken for the same boot, and no gap is recovered)."""
    try:
        return (procfs / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def clock() -> float:
    """Seconds since boot, suspend included: monotonic, never set, and shared by every
    process of one boot, so it measures both sampling intervals and downtime. (Where the
    OS has no CLOCK_BOOTTIME, the monotonic clock, which may not count suspend.)"""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


# -- reading --------------------------------------------------------------------------------

_NUMBER = (int, float)
_DEVICE_FIELDS: dict[str, tuple[type | tuple[type, ...], bool, float | None]] = {
    # name: (types, may be null, largest value for a number: all are >= 0)
    "id": (str, False, None), "kind": (str, False, None), "source": (str, False, None),
    "name": (str, False, None), "estimated": (bool, False, None),
    "mean_power": (bool, False, None), "identity": (str, False, None),
    "wrap_uj": (_NUMBER, True, MAX_COUNTER_UJ), "max_power_w": (_NUMBER, True, MAX_TOTAL),
    "energy_j": (_NUMBER, False, MAX_TOTAL), "emissions_g": (_NUMBER, False, MAX_TOTAL),
    "unmeasured_s": (_NUMBER, False, MAX_SECONDS), "counter_uj": (int, True, MAX_COUNTER_UJ),
    "t": (_NUMBER, True, MAX_SECONDS), "wall": (_NUMBER, True, MAX_SECONDS),
}


def parse(data: bytes) -> Restored:
    """A state file's content, checked field by field; StateError says what is wrong."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise StateError("nested too deeply: not a carbonmeter state file") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise StateError(f"not JSON ({e}); truncated or damaged") from None
    if _depth(doc) > MAX_DEPTH:
        raise StateError(f"nested more than {MAX_DEPTH} deep: not a carbonmeter state file")
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
        raise StateError("no version number: not a carbonmeter state file")
    if doc["version"] > VERSION:
        raise StateError(f"written by a newer carbonmeter (state version {doc['version']}, "
                         f"this one reads up to {VERSION})")
    if doc["version"] < 1:
        raise StateError(f"unknown state version {doc['version']}")
    boot, written, devices = doc.get("boot_id"), doc.get("written_unix"), doc.get("devices")
    machine = doc.get("machine_id", "")
    if not isinstance(boot, str) or not _number(written, MAX_SECONDS) \
            or not isinstance(devices, list) or not isinstance(machine, str):
        raise StateError("boot_id, written_unix, machine_id or devices missing or of the "
                         "wrong type, or out of range")
    seen: set[str] = set()
    for i, d in enumerate(devices):
        if not isinstance(d, dict):
            raise StateError(f"devices[{i}] is not an object")
        for name, (types, nullable, top) in _DEVICE_FIELDS.items():
            v = d.get(name)
            if not _typed(v, types, nullable):
                raise StateError(f"devices[{i}].{name} is missing or invalid: {_shown(v)}")
            if top is not None and v is not None and not _number(v, top):
                raise StateError(f"devices[{i}].{name} is not a number from 0 to {top:g}: "
                                 f"{_shown(v)}")
        if d["id"] in seen:
            raise StateError(f"device {d['id']!r} appears twice")
        seen.add(d["id"])
    attribution, embodied = doc.get("attribution"), doc.get("embodied", {})
    if attribution is not None:
        _check_attribution(attribution)
    if not isinstance(embodied, dict):
        raise StateError("embodied is not an object")
    for name, grams in embodied.items():
        if not _number(grams, MAX_TOTAL):
            raise StateError(f"embodied.{name} is not a number of grams from 0 to "
                             f"{MAX_TOTAL:g}: {_shown(grams)}")
    return Restored(boot, float(written), devices, attribution, embodied, machine)


def _check_attribution(a: Any) -> None:
    """The ledger's section: its level and scope, the special rows, and each workload."""
    from carbonmeter.attribution.view import LEVEL_LABELS

    if not isinstance(a, dict) or a.get("level") not in LEVEL_LABELS \
            or not isinstance(a.get("scope"), str):
        raise StateError("attribution has no known level or no scope")
    width = len(LEVEL_LABELS[a["level"]])
    kinds, special, workloads = a.get("kinds"), a.get("special"), a.get("workloads")
    if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
        raise StateError("attribution.kinds is not a list of names")
    if not isinstance(special, dict) or not set(special) <= {"host", "other", "unattributed"}:
        raise StateError("attribution.special is not an object of host, other, unattributed")
    for name, series in special.items():
        _check_series(series, f"attribution.special.{name}")
    _check_series(a.get("dropped"), "attribution.dropped")
    if not isinstance(workloads, list):
        raise StateError("attribution.workloads is not a list")
    keys: set[tuple] = set()
    for i, w in enumerate(workloads):
        where = f"attribution.workloads[{i}]"
        key, labels, attributes = (w.get(k) for k in ("key", "labels", "attributes")) \
            if isinstance(w, dict) else (None, None, None)
        if not isinstance(key, list) or not key or not all(
                isinstance(x, (str, int)) and not isinstance(x, bool) for x in key):
            raise StateError(f"{where}.key is not a list of strings and integers")
        if tuple(key) in keys:
            raise StateError(f"workload {key!r} appears twice")
        keys.add(tuple(key))
        if not isinstance(w.get("workload"), str) or not isinstance(w.get("tracked"), bool) \
                or not isinstance(w.get("ended"), bool) or not _number(w.get("total"),
                                                                       MAX_TOTAL):
            raise StateError(f"{where}: workload, tracked, ended or total missing or invalid")
        if labels is not None and not (isinstance(labels, list) and len(labels) == width
                                       and all(isinstance(x, str) for x in labels)):
            raise StateError(f"{where}.labels are not {width} strings")
        if not isinstance(attributes, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
                for p in attributes):
            raise StateError(f"{where}.attributes are not [name, value] pairs")
        _check_series(w.get("series"), f"{where}.series")


def _check_series(v: Any, where: str) -> None:
    """kind -> [joules, grams], both finite and never negative."""
    if not isinstance(v, dict):
        raise StateError(f"{where} is not an object")
    for kind, pair in v.items():
        if not (isinstance(pair, list) and len(pair) == 2
                and all(_number(x, MAX_TOTAL) for x in pair)):
            raise StateError(f"{where}.{kind} is not [joules, grams] from 0 to "
                             f"{MAX_TOTAL:g}: {_shown(pair)}")


def _typed(v: Any, types: type | tuple[type, ...], nullable: bool) -> bool:
    if v is None:
        return nullable
    if isinstance(v, bool):  # a bool is an int to isinstance, never a number here
        return types is bool
    return isinstance(v, types)


def _number(v: Any, top: float) -> bool:
    """A JSON number from 0 to `top`: never a bool, NaN or infinity, nor an integer too
    large for a float (json reads 10**400 as an int, which math.isfinite cannot take)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(v, int) and v.bit_length() > 80:  # beyond every top here, and any float
        return False
    return math.isfinite(v) and 0 <= v <= top


def _shown(v: Any) -> str:
    """A bad value for the log, cut short (a number may have thousands of digits)."""
    try:
        text = repr(v)
    except ValueError:  # an int too long for repr (Python's int max str digits)
        return "an integer of more than 4300 digits"
    return text if len(text) <= 60 else text[:57] + "..."


def _depth(doc: Any) -> int:
    """How deep lists and objects nest in `doc`, without recursing."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((x, depth + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


# -- the store ------------------------------------------------------------------------------


class Store:
    """One state file: load (or set aside) at start, durable checkpoints after.

    `machine` is this host's machine id (`machine_id()`), written into every checkpoint; a
    file that names another is set aside at load, never adopted."""

    def __init__(self, path: Path, machine: str = "") -> None:
        self.path = path
        self.machine = machine
        self._tmp_prefix = f".{path.name}."
        self._last_error = ""
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, path: str | None, *, machine: str = "") -> Store | None:
        """The store at `path`, creating its directory and taking its lock; None
        (persistence off, said in one log line) when `path` is None or the directory cannot
        be written. StateRefused when the file is another exporter's or not a regular file."""
        if path is None:
            log.info("state: state.path is not set; totals restart from zero at each start")
            return None
        p = Path(path)
        try:
            p.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            if not os.access(p.parent, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not writable")
        except OSError as e:
            log.warning("state: cannot write in %s (%s): totals restart from zero at each "
                        "start; set state.path to a writable file to keep them",
                        p.parent, e.strerror or e)
            return None
        _regular_or_none(p)
        store = cls(p, machine)
        store._lock()
        store._sweep()
        return store

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def _lock(self) -> None:
        """Hold an exclusive flock on the lock file until this process ends, and write our
        PID in it for whoever finds it taken."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
                         | os.O_NONBLOCK, 0o640)
        except OSError as e:
            raise StateRefused(f"state: cannot create the lock file {self.lock_path}: "
                               f"{e.strerror or e}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StateRefused(f"state: {self.lock_path} is not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                who = f"PID {holder}" if holder.isdigit() else "a process starting up"
                raise StateRefused(
                    f"state: {self.path} is in use by another carbonmeter exporter ({who}); "
                    "give each exporter its own state.path, or none") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the exporter is done with the file; ending the process does it
        too, however it ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> Restored | None:
        """The last checkpoint, or None when there is none or it cannot be trusted (then
        the file is renamed aside and the reason logged)."""
        try:
            data = _read_regular(self.path, MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("state: cannot read %s (%s): starting from zero", self.path,
                        e.strerror or e)
            return None
        try:
            if len(data) > MAX_BYTES:
                raise StateError(f"larger than {MAX_BYTES} bytes")
            restored = parse(data)
            if restored.machine_id and self.machine and restored.machine_id != self.machine:
                raise StateError(f"written on another machine (machine id "
                                 f"{restored.machine_id}; this one is {self.machine}): its "
                                 "totals are not this host's")
            return restored
        except StateError as e:
            aside = self.path.with_name(
                f"{self.path.name}.rejected-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            try:
                os.replace(self.path, aside)
                kept = f"kept as {aside}"
            except OSError as err:
                kept = f"could not be moved aside: {err.strerror or err}"
            log.warning("state: %s is unusable: %s; %s; starting from zero", self.path, e,
                        kept)
            return None

    def save(self, boot: str, checkpoint: dict[str, Any]) -> bool:
        """Write a checkpoint (`Sampler.export()`: devices, and attribution and embodied
        where they run) durably; False (logged when the reason changes) on failure, leaving
        the previous checkpoint in place."""
        doc = {"version": VERSION, "written_unix": time.time(), "boot_id": boot,
               "machine_id": self.machine, **checkpoint}
        try:
            data = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode()
            _write_durably(self.path, data, self._tmp_prefix)
        except (OSError, ValueError) as e:
            why = f"{e.strerror or e}" if isinstance(e, OSError) else str(e)
            if why != self._last_error:
                log.warning("state: checkpoint to %s failed: %s; the previous one is kept "
                            "and the next is tried in time", self.path, why)
            self._last_error = why
            return False
        if self._last_error:
            log.info("state: checkpoints to %s work again", self.path)
            self._last_error = ""
        return True

    def _sweep(self) -> None:
        """Remove temporary files a killed process left behind (ours only, by prefix)."""
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return
        for name in names:
            if name.startswith(self._tmp_prefix) and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(self.path.parent / name)


def _regular_or_none(path: Path) -> None:
    """StateRefused unless `path` is a regular file or absent: a device node or FIFO given
    as state.path must be neither read (a FIFO blocks, /dev/zero never ends) nor replaced."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as e:
        raise StateRefused(f"state: cannot stat {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise StateRefused(f"state.path: {path} is not a regular file ({_kind(mode)}); name "
                           "a file carbonmeter may create and replace", config=True)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of `path`, opened without blocking and read only if it is a
    regular file (it may have been replaced since it was checked)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(mode)})")
        chunks, size = [], 0
        while size < limit:
            chunk = os.read(fd, min(1 << 20, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """Every byte of a checkpoint goes through here (tests inject ENOSPC here)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_durably(path: Path, data: bytes, prefix: str) -> None:
    tmp = path.with_name(f"{prefix}{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
