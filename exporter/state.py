"""The state file: totals checkpointed to disk and restored at start.

It holds each device's track (exporter/accounting.py), and, when they run, the workload
ledger (exporter/attribution/ledger.py) and the embodied totals, all taken under the
sampler's lock so that they describe the same sample.

A checkpoint is written whole to a temporary file in the same directory, fsynced,
renamed over the old one and the directory fsynced, so after a crash or power loss
the file is the previous checkpoint or the new one, never a mixture. A file that
cannot be trusted (truncated, garbage, written by a newer carbonmeter) is renamed
aside with the reason logged, and the exporter starts from zero.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
MAX_BYTES = 16 << 20  # 10,000 workload series on five kinds of device take about 5 MB


@dataclass(frozen=True)
class Restored:
    """What a state file held: who wrote it, when, each device's track, and the workload
    ledger and embodied totals where they were kept."""

    boot_id: str
    written_unix: float
    devices: list[dict[str, Any]]
    attribution: dict[str, Any] | None = None
    embodied: dict[str, float] = field(default_factory=dict)


class StateError(ValueError):
    """Why a state file cannot be used, in words for the log."""


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

_DEVICE_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    # name: (types, may be null)
    "id": (str, False), "kind": (str, False), "source": (str, False), "name": (str, False),
    "estimated": (bool, False), "mean_power": (bool, False), "identity": (str, False),
    "wrap_uj": ((int, float), True), "max_power_w": ((int, float), True),
    "energy_j": ((int, float), False), "emissions_g": ((int, float), False),
    "unmeasured_s": ((int, float), False), "counter_uj": (int, True),
    "t": ((int, float), True), "wall": ((int, float), True),
}
_NON_NEGATIVE = ("energy_j", "emissions_g", "unmeasured_s", "counter_uj", "wrap_uj",
                 "max_power_w")


def parse(data: bytes) -> Restored:
    """A state file's content, checked field by field; StateError says what is wrong."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise StateError(f"not JSON ({e}); truncated or damaged") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("version"), int):
        raise StateError("no version number: not a carbonmeter state file")
    if doc["version"] > VERSION:
        raise StateError(f"written by a newer carbonmeter (state version {doc['version']}, "
                         f"this one reads up to {VERSION})")
    if doc["version"] < 1:
        raise StateError(f"unknown state version {doc['version']}")
    boot, written, devices = doc.get("boot_id"), doc.get("written_unix"), doc.get("devices")
    if not isinstance(boot, str) or not _number(written) or not isinstance(devices, list):
        raise StateError("boot_id, written_unix or devices missing or of the wrong type")
    seen: set[str] = set()
    for i, d in enumerate(devices):
        if not isinstance(d, dict):
            raise StateError(f"devices[{i}] is not an object")
        for name, (types, nullable) in _DEVICE_FIELDS.items():
            v = d.get(name)
            if not _typed(v, types, nullable) or (isinstance(v, float) and not math.isfinite(v)):
                raise StateError(f"devices[{i}].{name} is missing or invalid: {v!r}")
            if name in _NON_NEGATIVE and v is not None and v < 0:
                raise StateError(f"devices[{i}].{name} is negative: {v!r}")
        if d["id"] in seen:
            raise StateError(f"device {d['id']!r} appears twice")
        seen.add(d["id"])
    attribution, embodied = doc.get("attribution"), doc.get("embodied", {})
    if attribution is not None:
        _check_attribution(attribution)
    if not isinstance(embodied, dict):
        raise StateError("embodied is not an object")
    for name, grams in embodied.items():
        if not _number(grams) or grams < 0:
            raise StateError(f"embodied.{name} is not a number of grams >= 0: {grams!r}")
    return Restored(boot, float(written), devices, attribution, embodied)


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
                or not isinstance(w.get("ended"), bool) or not _number(w.get("total")) \
                or w["total"] < 0:
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
                and all(_number(x) and x >= 0 for x in pair)):
            raise StateError(f"{where}.{kind} is not [joules, grams] >= 0: {pair!r}")


def _typed(v: Any, types: type | tuple[type, ...], nullable: bool) -> bool:
    if v is None:
        return nullable
    if isinstance(v, bool):  # a bool is an int to isinstance, never a number here
        return types is bool
    return isinstance(v, types)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- the store ------------------------------------------------------------------------------


class Store:
    """One state file: load (or set aside) at start, durable checkpoints after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tmp_prefix = f".{path.name}."
        self._last_error = ""

    @classmethod
    def open(cls, path: str | None) -> Store | None:
        """The store at `path`, creating its directory; None (persistence off, said in one
        log line) when `path` is None or the directory cannot be written."""
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
        store = cls(p)
        store._sweep()
        return store

    def load(self) -> Restored | None:
        """The last checkpoint, or None when there is none or it cannot be trusted (then
        the file is renamed aside and the reason logged)."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("state: cannot read %s (%s): starting from zero", self.path,
                        e.strerror or e)
            return None
        try:
            if len(data) > MAX_BYTES:
                raise StateError(f"larger than {MAX_BYTES} bytes")
            return parse(data)
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
        doc = {"version": VERSION, "written_unix": time.time(), "boot_id": boot, **checkpoint}
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
