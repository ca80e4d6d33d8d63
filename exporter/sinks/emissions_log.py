"""The emissions log: one row per interval (serve), per command (run), per block and task (API).

The first 38 columns are CodeCarbon 3.3.2's `emissions.csv`: the same names in the same
order, with its units and meanings, so notebooks written for CodeCarbon read the file
unchanged: `duration` s, `emissions` kg CO2eq, `emissions_rate` kg/s, `*_power` W and
`*_energy`/`energy_consumed` kWh (PUE applied, as CodeCarbon applies it), `water_consumed`
L, `ram_total_size` and `ram_used_gb` GB (of 1024³ bytes), `country_iso_code` ISO alpha-3,
`on_cloud` Y/N, `timestamp` local time to the second without an offset; values CodeCarbon
leaves unset (`region`, `longitude`, `latitude`) are empty. carbonmeter's own columns follow.

Rows of carbonmeter's own writers never overlap except task rows, which lie inside their
run's rows: the rows of one `run_id` with an empty `task_name` add up to the run. The
CodeCarbon-shaped tracker writes CodeCarbon's rows instead: each flush() and stop() adds the
run's total so far (all with the same `started`), its tasks go to a file of their own.

Durability: each batch of rows is one write() on an O_APPEND descriptor, then fsync, under an
exclusive flock, so rows from concurrent writers never interleave and a crash loses at most the
batch being written. A torn last line (a writer killed mid-write) is cut off before the next
append. A file whose header has CodeCarbon's columns (in any order, as CodeCarbon accepts)
and otherwise only columns written here is continued in its own column order; a file with
another header is renamed to NAME.bak (then NAME_0.bak, ...), as CodeCarbon does.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from carbonmeter.periodic import Periodic
from carbonmeter.usage import Usage, usage_between

log = logging.getLogger(__name__)

CODECARBON_VERSION = "3.3.2"  # the CodeCarbon release whose emissions.csv the columns follow
CODECARBON_COLUMNS = (
    "timestamp", "project_name", "run_id", "experiment_id", "duration", "emissions",
    "emissions_rate", "cpu_power", "gpu_power", "ram_power", "cpu_energy", "gpu_energy",
    "ram_energy", "energy_consumed", "water_consumed", "country_name", "country_iso_code",
    "region", "cloud_provider", "cloud_region", "os", "python_version", "codecarbon_version",
    "cpu_count", "cpu_model", "gpu_count", "gpu_model", "longitude", "latitude",
    "ram_total_size", "tracking_mode", "cpu_utilization_percent", "gpu_utilization_percent",
    "ram_utilization_percent", "ram_used_gb", "on_cloud", "pue", "wue",
)  # fmt: skip
# CodeCarbon's file of task rows (emissions_<experiment_name>_<run_id>.csv): these columns,
# less those empty in every row.
TASK_COLUMNS = ("task_name", *(c for c in CODECARBON_COLUMNS
                               if c not in ("experiment_id", "pue", "wue")))
OWN_COLUMNS = (
    "task_name",  # "" for a whole interval or run; "epoch/forward" for nested tasks
    "started",  # when the row's span began: ISO 8601 UTC to the millisecond
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
DEFAULT_EXPERIMENT_ID = "5b0fa12a-3dd7-45bb-9766-cc326314d9f1"  # CodeCarbon's default
# Device kinds as CodeCarbon groups them: DRAM measured by RAPL and RAM estimated both go
# to ram_*; psys has a column of its own because it contains the CPU and the memory.
_GROUP = {"cpu": "cpu", "gpu": "gpu", "dram": "ram", "ram": "ram", "platform": "platform"}


@dataclass(frozen=True)
class Location:
    """Where the energy was spent, as CodeCarbon's location columns say it."""

    country_name: str | None = None
    country_iso_code: str | None = None
    region: str | None = None  # a state or province (lower case, as CodeCarbon), a city
    cloud_provider: str = ""
    cloud_region: str = ""

    @property
    def on_cloud(self) -> str:
        return "Y" if self.cloud_provider else "N"


def location_of(place: Any) -> Location:
    """The location columns for a bundled region (`carbonmeter.carbon.regions.Region`)."""
    from carbonmeter.carbon.regions import find_region

    def country(code: str) -> Any:
        try:
            found = find_region(code)
        except Exception:  # not a country we know: the columns stay empty
            return None
        return found if found.kind == "country" else None

    if place is None:
        return Location()
    if place.kind == "country":
        return Location(place.name, place.alpha3 or None)
    if place.kind == "cloud":  # "Paris, France", "EU (Paris), France", "Netherlands"
        city, _, land = place.name.rpartition(",")
        c = country(land.strip())
        return Location(c.name if c else None, c.alpha3 if c else None, city.strip() or None,
                        place.provider, place.code)
    c = country(place.code[:2])  # US-CA, CA-QC, SE3
    return Location(c.name if c else None, c.alpha3 if c else None, place.name.casefold())


@dataclass(frozen=True)
class RowContext:
    """What every row of one writer shares."""

    project_name: str
    run_id: str
    experiment_id: str = ""
    wue: float = 0.0  # litres of water per kWh (with PUE), CodeCarbon's WUE
    location: Location | None = None  # None: the place of the intensity in use
    dram_in_cpu: bool = False  # RAPL DRAM reported in cpu_* (CodeCarbon's rapl_include_dram)


@dataclass(frozen=True)
class Load:
    """The machine's CPU times, memory and GPU use at one instant (psutil and NVML, as
    CodeCarbon reads them)."""

    busy_s: float
    total_s: float
    ram_used_gb: float
    ram_percent: float
    gpu_percent: float | None = None  # mean over the GPUs; None without NVML


_nvml_state: dict[str, Any] = {}  # the pynvml module initialised here, or the one that failed


def _gpu_percent() -> float | None:
    """NVML's utilisation (the share of the last sample period a kernel ran), mean over the
    GPUs. NVML is initialised once per process and kept; on a host that cannot have it, not
    even imported (carbonmeter.probes.nvml.nvml_absent)."""
    import sys

    module = sys.modules.get("pynvml")
    try:
        if module is None:
            if _nvml_state.get("absent") is None:
                from carbonmeter.probes.nvml import nvml_absent

                _nvml_state["absent"] = nvml_absent(Path("/dev"))
            if _nvml_state["absent"]:
                return None
            import pynvml as module
        if _nvml_state.get("module") is not module:
            _nvml_state.update(module=module, ok=False)
            module.nvmlInit()
            _nvml_state["ok"] = True
        if not _nvml_state["ok"]:
            return None
        n = module.nvmlDeviceGetCount()
        rates = [module.nvmlDeviceGetUtilizationRates(module.nvmlDeviceGetHandleByIndex(i)).gpu
                 for i in range(n)]
    except Exception:  # no driver, no GPU, a GPU that cannot say: not measured
        return None
    return sum(rates) / len(rates) if rates else None


def logged_load(cfg: Any) -> Load | None:
    """The machine's load for a measurement whose rows go to a log: its CPU, RAM and GPU use
    are the log's columns only, so without a log nothing is read (nor psutil and NVML
    loaded)."""
    return read_load() if cfg.path else None


def read_load() -> Load | None:
    try:
        import psutil

        t = psutil.cpu_times()
        mem = psutil.virtual_memory()
    except Exception:  # no psutil support on this platform: the columns stay 0
        return None
    total = sum(t) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    busy = total - t.idle - getattr(t, "iowait", 0.0)
    return Load(busy, total, mem.used / 1024**3, mem.percent, _gpu_percent())


def new_run_id() -> str:
    return str(uuid.uuid4())


@cache
def _host() -> dict[str, Any]:
    """The machine's description, read once: CodeCarbon's os … ram_total_size columns."""
    import platform

    try:
        import psutil

        ram_gb: Any = psutil.virtual_memory().total / 1024**3
    except Exception:  # no psutil support on this platform: leave it empty
        ram_gb = None
    from carbonmeter.version import version

    return {"os": platform.platform(), "python_version": platform.python_version(),
            "cpu_count": os.cpu_count() or None, "ram_total_size": ram_gb,
            "carbonmeter_version": version()}


@cache
def _cpu_model() -> str:
    from carbonmeter.probes.cpu_model import read_cpuinfo

    return read_cpuinfo(Path("/proc"))[0]


def _utilisation(load: tuple[Load | None, Load | None] | None) \
        -> tuple[float, float, float, float | None]:
    """CPU %, RAM %, RAM GB and GPU % over a span: the exact CPU mean from the CPU times at
    its ends, the mean of the two memory and GPU readings."""
    a, b = load or (None, None)
    if a is None or b is None:
        return 0.0, 0.0, 0.0, None
    dt = b.total_s - a.total_s
    cpu = min(100.0, max(0.0, (b.busy_s - a.busy_s) / dt * 100)) if dt > 0 else 0.0
    gpu = None
    if a.gpu_percent is not None and b.gpu_percent is not None:
        gpu = (a.gpu_percent + b.gpu_percent) / 2
    return cpu, (a.ram_percent + b.ram_percent) / 2, (a.ram_used_gb + b.ram_used_gb) / 2, gpu


def row(usage: Usage, ctx: RowContext, *, task_name: str = "",
        load: tuple[Load | None, Load | None] | None = None) -> dict[str, Any]:
    """One row for a span, keyed by COLUMNS; numbers as numbers, None for empty."""
    from carbonmeter.carbon.compare import region_of

    group = dict(_GROUP, dram="cpu") if ctx.dram_in_cpu else _GROUP
    pue = usage.pue
    kwh: dict[str, float] = {"cpu": 0.0, "gpu": 0.0, "ram": 0.0, "platform": 0.0}
    if usage.share is not None:  # the process tree's part of each kind (tracking_mode process)
        for kind, joules in usage.share.by_kind.items():
            kwh[group.get(kind, "platform")] += joules / 3.6e6 * pue
        total_kwh, kg = usage.share.energy_j / 3.6e6 * pue, usage.share.emissions_g / 1000
    else:
        for d in usage.counted:
            kwh[group.get(d.kind, "platform")] += d.energy_j / 3.6e6 * pue
        total_kwh, kg = usage.energy_kwh * pue, usage.emissions_kg
    hours = usage.duration_s / 3600

    def watts(g: str) -> float:
        return kwh[g] * 1000 / hours if hours > 0 else 0.0

    gpus: dict[str, int] = {}
    for d in usage.devices:
        if d.kind == "gpu":
            gpus[d.name or d.id] = gpus.get(d.name or d.id, 0) + 1
    cpu = next((d.name for d in usage.devices if d.kind == "cpu" and d.name), "")
    i = usage.intensity
    where = ctx.location or location_of(region_of(i))
    host = _host()
    ended = usage.started_unix + usage.duration_s
    cpu_pct, ram_pct, ram_gb, gpu_pct = _utilisation(load)
    return {
        "timestamp": datetime.fromtimestamp(ended).strftime("%Y-%m-%dT%H:%M:%S"),
        "project_name": ctx.project_name,
        "run_id": ctx.run_id,
        "experiment_id": ctx.experiment_id,
        "duration": usage.duration_s,
        "emissions": kg,
        "emissions_rate": kg / usage.duration_s if usage.duration_s > 0 else 0.0,
        "cpu_power": watts("cpu"),
        "gpu_power": watts("gpu"),
        "ram_power": watts("ram"),
        "cpu_energy": kwh["cpu"],
        "gpu_energy": kwh["gpu"],
        "ram_energy": kwh["ram"],
        "energy_consumed": total_kwh,
        "water_consumed": total_kwh * ctx.wue,
        "country_name": where.country_name,
        "country_iso_code": where.country_iso_code,
        "region": where.region,
        "cloud_provider": where.cloud_provider,
        "cloud_region": where.cloud_region,
        "os": host["os"],
        "python_version": host["python_version"],
        "codecarbon_version": CODECARBON_VERSION,
        "cpu_count": host["cpu_count"],
        "cpu_model": cpu or _cpu_model(),
        "gpu_count": sum(gpus.values()),
        "gpu_model": ", ".join(f"{n} x {name}" for name, n in gpus.items()),
        "longitude": None,
        "latitude": None,
        "ram_total_size": host["ram_total_size"],
        "tracking_mode": "process" if usage.share is not None else "machine",
        "cpu_utilization_percent": cpu_pct,
        "gpu_utilization_percent": gpu_pct if gpus else 0.0,
        "ram_utilization_percent": ram_pct,
        "ram_used_gb": ram_gb,
        "on_cloud": where.on_cloud,
        "pue": pue,
        "wue": ctx.wue,
        "task_name": task_name,
        "started": datetime.fromtimestamp(usage.started_unix, timezone.utc)
                           .isoformat(timespec="milliseconds"),
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


def rows_for(usage: Usage, ctx: RowContext,
             load: tuple[Load | None, Load | None] | None = None) -> list[dict[str, Any]]:
    """The run's row, then one per task, depth first, named by their path."""
    out = [row(usage, ctx, load=load)]

    def walk(tasks: tuple[Usage, ...], prefix: str) -> None:
        for t in tasks:
            name = f"{prefix}{t.name}"
            out.append(row(t, ctx, task_name=name))
            walk(t.tasks, name + "/")

    walk(usage.tasks, "")
    return out


def _csv_cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if key == "devices":
        return json.dumps(value, separators=(",", ":"))
    return value


def csv_lines(rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> bytes:
    """Rows as CSV in `columns`' order: numbers as Python writes them (as pandas does), None
    as an empty field."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow(_csv_cell(k, r.get(k)) for k in columns)
    return buf.getvalue().encode()


class EmissionsLog:
    """Appends rows to one file, durably; see the module's docstring."""

    def __init__(self, path: str | os.PathLike[str], fmt: str = "csv") -> None:
        self.path = Path(path)
        self.format = fmt

    def header(self) -> bytes:
        """CSV starts with the column names; in JSON Lines every line carries its keys."""
        return b"" if self.format == "jsonl" else (",".join(COLUMNS) + "\n").encode()

    def _encode(self, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> bytes:
        if self.format == "jsonl":
            return b"".join(json.dumps({k: r[k] for k in COLUMNS}, separators=(",", ":"),
                                       ensure_ascii=False).encode() + b"\n" for r in rows)
        return csv_lines(rows, columns)

    def _columns(self, first_line: bytes) -> list[str] | None:
        """The columns to write in a file that starts with `first_line`; None when the file
        is not one this writer may continue."""
        if self.format == "jsonl":
            try:
                return list(COLUMNS) if list(json.loads(first_line)) == list(COLUMNS) else None
            except ValueError:
                return None
        return continued_columns(first_line)

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write `rows` and make them durable before returning. Raises OSError."""
        if rows:
            self._locked(lambda fd, size, columns: _write_at_end(
                fd, size, self.header() if not size else b"", self._encode(rows, columns),
                self.path))

    def replace_run(self, run_id: str, new: dict[str, Any]) -> None:
        """CodeCarbon's on_csv_write="update": the row of `run_id` is replaced by `new` (the
        file is rewritten, then renamed over the old one); with more than one row of that
        run, `new` is appended instead, as CodeCarbon does. Raises OSError."""

        def update(fd: int, size: int, columns: list[str]) -> None:
            text = os.pread(fd, size, 0).decode("utf-8", "replace") if size else ""
            lines = text.splitlines(keepends=True)
            header, body = (lines[0], lines[1:]) if lines else ("", [])
            ids = [next(csv.reader([line]), [""]) for line in body]
            at = columns.index("run_id") if "run_id" in columns else -1
            mine = [n for n, cells in enumerate(ids) if at >= 0 and len(cells) > at
                    and cells[at] == run_id]
            if len(mine) > 1:
                log.warning("%s has %d rows of run %s: appending instead of updating",
                            self.path, len(mine), run_id)
                _write_at_end(fd, size, b"", self._encode([new], columns), self.path)
                return
            keep = [line for n, line in enumerate(body) if n not in mine]
            data = ((header or self.header().decode()) + "".join(keep)).encode() \
                + self._encode([new], columns)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)

        self._locked(update)

    def _locked(self, act: Callable[[int, int, list[str]], None]) -> None:
        """Run `act(fd, size, columns)` on the file under its exclusive lock, once its
        header is known to be continuable (else it is backed up and a new one begun)."""
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
                columns = list(COLUMNS)
                if size:
                    found = self._columns(_first_line(fd))
                    if found is None:
                        aside = backup_path(self.path)
                        os.rename(self.path, aside)
                        _fsync_dir(self.path.parent)
                        log.warning("%s has another header (not CodeCarbon's emissions.csv nor "
                                    "a carbonmeter %s log): kept as %s; starting a new file",
                                    self.path, self.format, aside.name)
                        continue
                    columns = found
                    size = _cut_torn_tail(fd, size, self.path)
                act(fd, size, columns)
                return
            finally:
                os.close(fd)  # also releases the lock
        raise OSError(f"{self.path}: renamed by another process five times in a row")


def continued_columns(first_line: bytes) -> list[str] | None:
    """A CSV header this log can continue, in its own order: CodeCarbon's columns (any
    order, as CodeCarbon checks them) and, besides them, only columns written here."""
    try:
        header = next(csv.reader([first_line.decode("utf-8").rstrip("\r\n")]))
    except (UnicodeDecodeError, StopIteration, csv.Error):
        return None
    names = set(header)
    if len(names) != len(header) or not set(CODECARBON_COLUMNS) <= names <= set(COLUMNS):
        return None
    return header


def _write_at_end(fd: int, size: int, header: bytes, data: bytes, path: Path) -> None:
    os.write(fd, header + data)
    os.fsync(fd)
    if not size:
        _fsync_dir(path.parent)


def write_task_file(path: Path, rows: list[dict[str, Any]]) -> None:
    """CodeCarbon's file of task rows, rewritten whole: TASK_COLUMNS less the ones empty in
    every row (as CodeCarbon drops them), then carbonmeter's own. Raises OSError."""
    columns = [c for c in TASK_COLUMNS if any(r.get(c) is not None for r in rows)]
    columns += [c for c in OWN_COLUMNS if c != "task_name"]
    data = (",".join(columns) + "\n").encode() + csv_lines(rows, columns)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def backup_path(path: Path) -> Path:
    """Where a file with another header goes, as CodeCarbon names it: NAME.bak, then
    NAME_0.bak, NAME_1.bak, ... (an existing backup is never overwritten)."""
    candidate = path.with_name(f"{path.name}.bak")
    n = 0
    while candidate.exists():
        candidate = path.with_name(f"{path.name}_{n}.bak")
        n += 1
    return candidate


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
    """`serve`: one row per sampler snapshot, written on the sampler's thread after the
    sample (see carbonmeter.periodic: one append and fsync, milliseconds).

    Each row is the difference between the last snapshot written and the newest one, so a
    snapshot skipped (a slow disk) only makes the next row longer; nothing is lost. At close,
    the row of what was counted since the last one.
    """

    cursor = None
    inline = True

    def __init__(self, log_: EmissionsLog, latest: Callable[[], Any], interval: float,
                 ctx: RowContext) -> None:
        super().__init__("emissions-log", interval)
        self.log = log_
        self.latest = latest
        self.ctx = ctx
        self._written = latest()
        self._load = read_load()  # the machine's CPU times and memory at the last row
        self._failing = ""

    def start(self) -> None:
        self._written, self._load = self.latest(), read_load()  # rows begin at the first sample
        super().start()
        log.info("emissions log: one row per interval in %s (%s)", self.log.path,
                 self.log.format)

    def tick(self) -> None:
        snap = self.latest()
        if snap.seq == self._written.seq:
            return
        load = read_load()
        try:
            self.log.append([row(usage_between(self._written, snap), self.ctx,
                                 load=(self._load, load))])
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
        self._written, self._load = snap, load
