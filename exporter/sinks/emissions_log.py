"""The emissions log: one row per interval (serve), per command (run), per block and task (API).

Where a column means what a column of CodeCarbon's `emissions.csv` means it has that name and
unit, in CodeCarbon's order, so notebooks written for CodeCarbon read it unchanged: `duration`
s, `emissions` kg CO2eq, `emissions_rate` kg/s, `*_power` W, `*_energy` and `energy_consumed`
kWh, `ram_total_size` GB, `country_iso_code` ISO alpha-3, `on_cloud` Y/N. carbonmeter's own
columns follow. Rows never overlap except task rows, which lie inside their run's rows: the rows
of one `run_id` with an empty `task_name` add up to the run.

Durability: each batch of rows is one write() on an O_APPEND descriptor, then fsync, under an
exclusive flock, so rows from concurrent writers never interleave and a crash loses at most the
batch being written. A torn last line (a writer killed mid-write) is cut off before the next
append; a file with another header is renamed aside, never overwritten.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from carbonmeter.periodic import Periodic
from carbonmeter.usage import Usage, usage_between

log = logging.getLogger(__name__)

CODECARBON_COLUMNS = (
    "timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions",
    "emissions_rate", "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy",
    "ram_energy", "energy_consumed", "country_name", "country_iso_code", "region",
    "cloud_provider", "cloud_region", "os", "python_version", "codecarbon_version", "cpu_count",
    "cpu_model", "gpu_count", "gpu_model", "longitude", "latitude", "ram_total_size",
    "tracking_mode", "on_cloud", "pue",
)  # fmt: skip
OWN_COLUMNS = (
    "task_name",  # "" for a whole interval or run; "epoch/forward" for nested tasks
    "carbon_intensity",  # gCO2eq/kWh in use at the end of the row
    "carbon_intensity_region",  # "FR", "world", "custom", a cloud region
    "carbon_intensity_source",  # the citation of that figure
    "platform_power",  # W: RAPL psys (whole SoC, then no cpu_* or ram_*), or the estimate
    # of the rest of the server (platform_model), beside cpu_* and ram_*
    "platform_energy",  # kWh
    # JSON: {device: {kind, source, estimated, energy kWh, emissions kg, relative_error}}
    "devices",
    "carbonmeter_version",
    # expected relative error of energy_consumed (and emissions): the estimated devices'
    # error bars weighted by their energy; 0 when everything was measured
    "energy_consumed_relative_error",
)
COLUMNS = CODECARBON_COLUMNS + OWN_COLUMNS
# Device kinds as CodeCarbon groups them: DRAM measured by RAPL and RAM estimated both go
# to ram_*; psys has a column of its own because it contains the CPU and the memory.
_GROUP = {"cpu": "cpu", "gpu": "gpu", "dram": "ram", "ram": "ram", "platform": "platform"}


@dataclass(frozen=True)
class RowContext:
    """What every row of one writer shares."""

    project_name: str
    run_id: str
    experiment_id: str = ""
    tracking_mode: str = "machine"


def new_run_id() -> str:
    return str(uuid.uuid4())


@cache
def _host() -> dict[str, Any]:
    """The machine's description, read once: CodeCarbon's os … ram_total_size columns."""
    import platform

    try:
        import psutil

        ram_gb = round(psutil.virtual_memory().total / 1024**3, 3)
    except Exception:  # no psutil support on this platform: leave it empty
        ram_gb = ""
    from carbonmeter import __version__

    return {"os": platform.platform(), "python_version": platform.python_version(),
            "cpu_count": os.cpu_count() or "", "ram_total_size": ram_gb,
            "carbonmeter_version": __version__}


@cache
def _cpu_model() -> str:
    from carbonmeter.probes.cpu_model import read_cpuinfo

    return read_cpuinfo(Path("/proc"))[0]


def row(usage: Usage, ctx: RowContext, *, task_name: str = "") -> dict[str, Any]:
    """One row for a span, keyed by COLUMNS; numbers as numbers."""
    from carbonmeter.carbon.compare import region_of

    kwh: dict[str, float] = {"cpu": 0.0, "gpu": 0.0, "ram": 0.0, "platform": 0.0}
    for d in usage.devices:
        kwh[_GROUP.get(d.kind, "platform")] += d.energy_j / 3.6e6
    hours = usage.duration_s / 3600

    def watts(group: str) -> float:
        return kwh[group] * 1000 / hours if hours > 0 else 0.0

    gpus: dict[str, int] = {}
    for d in usage.devices:
        if d.kind == "gpu":
            gpus[d.name or d.id] = gpus.get(d.name or d.id, 0) + 1
    cpu = next((d.name for d in usage.devices if d.kind == "cpu" and d.name), "")
    i = usage.intensity
    place = region_of(i)
    country = place if place is not None and place.kind == "country" else None
    cloud = place if place is not None and place.kind == "cloud" else None
    other = place if place is not None and place.kind not in ("country", "cloud") else None
    host = _host()
    ended = datetime.fromtimestamp(usage.started_unix + usage.duration_s).astimezone()
    return {
        "timestamp": ended.isoformat(timespec="milliseconds"),
        "project_name": ctx.project_name,
        "run_id": ctx.run_id,
        "experiment_id": ctx.experiment_id,
        "duration": usage.duration_s,
        "emissions": usage.emissions_kg,
        "emissions_rate": usage.emissions_kg / usage.duration_s if usage.duration_s else 0.0,
        "cpu_power": watts("cpu"),
        "gpu_power": watts("gpu"),
        "ram_power": watts("ram"),
        "cpu_energy": kwh["cpu"],
        "gpu_energy": kwh["gpu"],
        "ram_energy": kwh["ram"],
        "energy_consumed": usage.energy_kwh,
        "country_name": country.name if country else "",
        "country_iso_code": country.alpha3 if country else "",
        "region": other.code if other else "",
        "cloud_provider": cloud.provider if cloud else "",
        "cloud_region": cloud.code if cloud else "",
        "os": host["os"],
        "python_version": host["python_version"],
        "codecarbon_version": "",
        "cpu_count": host["cpu_count"],
        "cpu_model": cpu or _cpu_model(),
        "gpu_count": sum(gpus.values()),
        "gpu_model": ", ".join(f"{n} x {name}" for name, n in gpus.items()),
        "longitude": "",
        "latitude": "",
        "ram_total_size": host["ram_total_size"],
        "tracking_mode": ctx.tracking_mode,
        "on_cloud": "Y" if cloud else "N",
        "pue": usage.pue,
        "task_name": task_name,
        "carbon_intensity": i.g_per_kwh,
        "carbon_intensity_region": i.region,
        "carbon_intensity_source": i.source,
        "platform_power": watts("platform"),
        "platform_energy": kwh["platform"],
        "devices": {d.id: {"kind": d.kind, "source": d.source, "estimated": d.estimated,
                           "energy": d.energy_j / 3.6e6, "emissions": d.emissions_g / 1000,
                           **({} if (e := d.relative_error(usage.duration_s)) is None
                              else {"relative_error": e})}
                    for d in usage.devices},
        "carbonmeter_version": host["carbonmeter_version"],
        "energy_consumed_relative_error": usage.energy_relative_error,
    }


def rows_for(usage: Usage, ctx: RowContext) -> list[dict[str, Any]]:
    """The run's row, then one per task, depth first, named by their path."""
    out = [row(usage, ctx)]

    def walk(tasks: tuple[Usage, ...], prefix: str) -> None:
        for t in tasks:
            name = f"{prefix}{t.name}"
            out.append(row(t, ctx, task_name=name))
            walk(t.tasks, name + "/")

    walk(usage.tasks, "")
    return out


class EmissionsLog:
    """Appends rows to one file, durably; see the module's docstring."""

    def __init__(self, path: str | os.PathLike[str], fmt: str = "csv") -> None:
        self.path = Path(path)
        self.format = fmt

    def header(self) -> bytes:
        """CSV starts with the column names; in JSON Lines every line carries its keys."""
        return b"" if self.format == "jsonl" else (",".join(COLUMNS) + "\n").encode()

    def _encode(self, rows: Iterable[dict[str, Any]]) -> list[bytes]:
        out = []
        for r in rows:
            if self.format == "jsonl":
                out.append(json.dumps({k: r[k] for k in COLUMNS}, separators=(",", ":"),
                                      ensure_ascii=False).encode() + b"\n")
            else:
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerow(
                    json.dumps(r[k], separators=(",", ":")) if k == "devices" else r[k]
                    for k in COLUMNS)
                out.append(buf.getvalue().encode())
        return out

    def _matches(self, first_line: bytes) -> bool:
        if self.format == "jsonl":
            try:
                return list(json.loads(first_line)) == list(COLUMNS)
            except ValueError:
                return False
        return first_line.rstrip(b"\r\n") == ",".join(COLUMNS).encode()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write `rows` and make them durable before returning. Raises OSError."""
        if not rows:
            return
        data = b"".join(self._encode(rows))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another writer may rename the file between open and lock
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    continue
                size = os.fstat(fd).st_size
                if size and not self._matches(_first_line(fd)):
                    aside = _aside(self.path)
                    os.rename(self.path, aside)
                    _fsync_dir(self.path.parent)
                    log.warning("%s has another header (not a carbonmeter %s log of this "
                                "version): kept as %s; starting a new file", self.path,
                                self.format, aside.name)
                    continue
                if size:
                    size = _cut_torn_tail(fd, size, self.path)
                os.write(fd, (b"" if size else self.header()) + data)
                os.fsync(fd)
                if not size:
                    _fsync_dir(self.path.parent)
                return
            finally:
                os.close(fd)  # also releases the lock
        raise OSError(f"{self.path}: renamed by another process five times in a row")


def _first_line(fd: int) -> bytes:
    chunk = os.pread(fd, 1 << 16, 0)
    return chunk.split(b"\n", 1)[0]


def _cut_torn_tail(fd: int, size: int, path: Path) -> int:
    """A last line without its newline was being written when its writer died: drop it."""
    if os.pread(fd, 1, size - 1) == b"\n":
        return size
    start = max(0, size - (1 << 20))
    tail = os.pread(fd, size - start, start)
    keep = start + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    os.ftruncate(fd, keep)
    log.warning("%s: dropped an incomplete last row (%d bytes) left by a writer that was "
                "stopped while appending", path, size - keep)
    return keep


def _aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for n in range(1000):
        suffix = f".{n}" if n else ""
        candidate = path.with_name(f"{path.stem}.old-{stamp}{suffix}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise OSError(f"{path}: too many files kept aside")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_log(cfg_log: Any, *, path: str | None = None, fmt: str | None = None) \
        -> EmissionsLog | None:
    """The configured log (section `emissions_log`), or None when no path is set."""
    path = path or cfg_log.path
    return EmissionsLog(path, fmt or cfg_log.format) if path else None


class EmissionsLogSink(Periodic):
    """`serve`: one row per sampler snapshot, written by its own thread, never the loop's.

    Each row is the difference between the last snapshot written and the newest one, so a
    snapshot skipped (a slow disk) only makes the next row longer; nothing is lost. At close,
    the row of what was counted since the last one.
    """

    cursor = None

    def __init__(self, log_: EmissionsLog, latest: Callable[[], Any], interval: float,
                 ctx: RowContext) -> None:
        super().__init__("emissions-log", interval)
        self.log = log_
        self.latest = latest
        self.ctx = ctx
        self._written = latest()
        self._failing = ""

    def start(self) -> None:
        self._written = self.latest()  # rows begin at the first sample
        super().start()
        log.info("emissions log: one row per interval in %s (%s)", self.log.path,
                 self.log.format)

    def tick(self) -> None:
        snap = self.latest()
        if snap.seq == self._written.seq:
            return
        try:
            self.log.append([row(usage_between(self._written, snap), self.ctx)])
        except OSError as e:
            message = f"{e.strerror or e}"
            if message != self._failing:
                log.error("emissions log %s: cannot write: %s; retrying every interval",
                          self.log.path, message)
            self._failing = message
            return
        if self._failing:
            log.info("emissions log %s: writing again", self.log.path)
            self._failing = ""
        self._written = snap
