"""An emissions log read and summed: totals, devices, time buckets, other regions, equivalents.

Reads carbonmeter's log (CSV or JSON Lines) and CodeCarbon's emissions.csv alike: only
CodeCarbon's columns are required; carbonmeter's own (`devices`, `carbon_intensity`,
`task_name`, ...) add detail where present. Task rows lie inside their run's rows, so
totals add up the other rows only. The energy and power columns have the PUE applied, as
CodeCarbon's do. A CodeCarbon tracker writes its run's total so far at each flush, so rows
that cover the same span from the same start (one `run_id` and one `started`; in
CodeCarbon's own file, one `run_id`) are one span: its last, longest row counts.

Every figure is a sum of the rows' own: the emissions are each row's emissions, priced where
and when it ran, so a log of runs in several regions (or under a live intensity) is never
re-priced at one row's intensity. Each grid that occurs is shown with its share of the energy
and its mean intensity over its rows, and the comparison with other grids is made on the
energy. What was measured is told from the `devices` column; a log without it (CodeCarbon's
own) does not say, and all of its energy is counted as estimated.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from carbonmeter import units
from carbonmeter.carbon.compare import Elsewhere, mixed
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.regions import regions
from carbonmeter.report.equivalents import Factor, equivalents

KINDS = (("cpu", "cpu_energy"), ("gpu", "gpu_energy"), ("ram", "ram_energy"),
         ("platform", "platform_energy"))
REQUIRED = ("timestamp", "duration", "emissions", "energy_consumed")


class LogError(Exception):
    """A file that is not an emissions log. str() says what is wrong, for the user."""


@dataclass
class Row:
    end: datetime
    duration_s: float
    energy_kwh: float
    emissions_g: float
    pue: float
    task: str
    run_id: str
    kinds: dict[str, float]  # kWh per device kind
    devices: dict[str, dict[str, Any]]  # id -> kind, source, estimated, energy (kWh)
    intensity: tuple[str, float, str, str]  # region, g/kWh, source, cloud provider
    span: tuple[str, ...] = ()  # rows with the same span key are totals of one span so far
    tracking_mode: str = "machine"  # "process": the figures are a process tree's share
    error: float | None = None  # energy_consumed_relative_error; None in logs without it

    @property
    def measured_kwh(self) -> float:
        """The measured part of the row's energy, in the proportion its devices give; none
        for a row without devices (nothing says what was measured)."""
        known = [d for d in self.devices.values() if isinstance(d, dict)]
        total = sum(_num(d.get("energy")) for d in known)
        if total <= 0:
            return 0.0
        measured = sum(_num(d.get("energy")) for d in known if not d.get("estimated"))
        return self.energy_kwh * measured / total


@dataclass(frozen=True)
class GridUse:
    """One grid of the log: its rows' energy and emissions, and their mean intensity."""

    intensity: Intensity  # g_per_kwh: the emissions of its rows over their energy x PUE
    energy_kwh: float
    facility_kwh: float
    emissions_g: float
    share: float  # of the log's energy


@dataclass
class Summary:
    rows: list[Row]  # runs and intervals, no tasks
    tasks: list[Row]
    first: datetime
    last: datetime
    duration_s: float
    energy_kwh: float
    facility_kwh: float  # energy x PUE: what the grid delivered
    emissions_g: float
    runs: int
    by_kind: dict[str, float]
    by_device: dict[str, dict[str, Any]]
    grids: list[GridUse]  # largest share first
    places: list[Elsewhere]
    equivalents: list[tuple[Factor, float]]
    over_time: list[tuple[datetime, float, float]] = field(default_factory=list)
    bucket: str = ""
    measured_kwh: float = 0.0  # of energy_kwh; the rest is estimated or not said
    devices_known: bool = True  # False: no row says its devices (CodeCarbon's log)
    process_rows: int = 0  # rows whose figures are a command's process tree, not the machine
    # expected relative error of energy_kwh (and emissions), from the rows that carry one
    energy_relative_error: float | None = None

    @property
    def g_per_kwh(self) -> float:
        """The mean intensity: the emissions over the facility energy."""
        return self.emissions_g / self.facility_kwh if self.facility_kwh > 0 else 0.0

    @property
    def measured_share(self) -> float:
        return self.measured_kwh / self.energy_kwh if self.energy_kwh > 0 else 0.0


def device_error(d: dict[str, Any]) -> float | None:
    """The energy-weighted error bar of one device of `Summary.by_device`, or None."""
    if not d.get("has_error") or d["energy_kwh"] <= 0:
        return None
    return d["error_kwh"] / d["energy_kwh"]


def _num(value: Any, default: float = 0.0) -> float:
    if value in ("", None):
        return default
    try:
        x = float(value)
    except (TypeError, ValueError):
        return default
    return x if math.isfinite(x) else default


def _time(value: str) -> datetime:
    t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return t if t.tzinfo else t.astimezone()  # CodeCarbon writes local time without offset


def read(path: Path) -> list[dict[str, Any]]:
    """The records of a log, as dicts of strings (CSV) or values (JSON Lines)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LogError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise LogError(f"{path}: not UTF-8 text") from None
    if not text.strip():
        raise LogError(f"{path}: empty; an emissions log has a header and rows")
    if text.lstrip().startswith("{"):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if n == len(text.splitlines()) and not text.endswith("\n"):
                    break  # a torn last line: its writer was stopped mid-write
                raise LogError(f"{path}: line {n} is not JSON") from None
        return records
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
    if missing:
        raise LogError(f"{path}: not an emissions log: no column {', '.join(missing)} "
                       "(expected carbonmeter's or CodeCarbon's emissions.csv header)")
    return [r for r in reader if None not in r.values() and None not in r]  # torn rows out


def _row(r: dict[str, Any], where: str) -> Row:
    missing = [c for c in REQUIRED if c not in r]
    if missing:
        raise LogError(f"{where}: no {', '.join(missing)}")
    try:
        end = _time(str(r["timestamp"]))
    except ValueError:
        raise LogError(f"{where}: timestamp {r['timestamp']!r} is not ISO 8601") from None
    devices = r.get("devices") or {}
    if isinstance(devices, str):
        try:
            devices = json.loads(devices)
        except ValueError:
            devices = {}
    pue = _num(r.get("pue"), 1.0) or 1.0
    energy = _num(r["energy_consumed"]) / pue  # what the devices drew, before the PUE
    emissions_g = _num(r["emissions"]) * 1000
    g_per_kwh = _num(r.get("carbon_intensity"), -1)
    if g_per_kwh < 0:  # CodeCarbon's log: the intensity is what its numbers imply
        g_per_kwh = emissions_g / (energy * pue) if energy > 0 else 0.0
    region = str(r.get("carbon_intensity_region") or r.get("cloud_region")
                 or r.get("country_iso_code") or "")
    error = _num(r.get("energy_consumed_relative_error"), -1)
    run_id = str(r.get("run_id") or "")
    if r.get("started"):
        span: tuple[str, ...] = (run_id, str(r["started"]))
    elif "carbonmeter_version" in r or not run_id:
        span = ()  # a row of its own
    else:
        span = (run_id,)  # CodeCarbon's file: a run's rows are its totals so far
    return Row(end=end, duration_s=_num(r["duration"]), energy_kwh=energy,
               emissions_g=emissions_g, pue=pue, task=str(r.get("task_name") or ""),
               run_id=run_id, kinds={k: _num(r.get(col)) / pue for k, col in KINDS},
               devices=devices if isinstance(devices, dict) else {},
               intensity=(region, g_per_kwh, str(r.get("carbon_intensity_source") or ""),
                          str(r.get("cloud_provider") or "")), span=span,
               tracking_mode=str(r.get("tracking_mode") or "machine"),
               error=error if 0 <= error <= 10 else None)


def _last_of_each_span(rows: list[Row]) -> list[Row]:
    """Of rows that are totals of one span so far, the longest (the last written)."""
    out: list[Row] = []
    where: dict[tuple[str, ...], int] = {}
    for r in rows:
        if not r.span:
            out.append(r)
        elif r.span not in where:
            where[r.span] = len(out)
            out.append(r)
        elif r.duration_s >= out[where[r.span]].duration_s:
            out[where[r.span]] = r
    return out


def _intensity(region: str, g: float, source: str, provider: str) -> Intensity:
    """The intensity a log recorded, matched to its bundled row when there is one."""
    key = region.casefold()
    for r in regions():
        if key in (r.code.casefold(), r.alpha3.casefold()) and abs(r.g_per_kwh - g) < 0.05 and \
                (not provider or r.provider == provider):
            return Intensity(r.g_per_kwh, r.code, r.provider or "bundled", r.source, r.year)
    return Intensity(g, region or "custom", "config", source or "as recorded in the log")


def _grids(rows: list[Row], energy_kwh: float) -> list[GridUse]:
    """The rows grouped by grid (region and cloud provider): a live intensity gives each row
    its own value, and one region is still one grid, at its rows' mean."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.intensity[0], r.intensity[3]), []).append(r)
    out = []
    for (region, provider), members in groups.items():
        energy = sum(r.energy_kwh for r in members)
        facility = sum(r.energy_kwh * r.pue for r in members)
        grams = sum(r.emissions_g for r in members)
        values = {r.intensity[1] for r in members}
        mean = grams / facility if facility > 0 else values.pop()
        sources = {r.intensity[2] for r in members}
        source = sources.pop() if len(sources) == 1 else "several sources"
        out.append(GridUse(_intensity(region, mean, source, provider), energy, facility, grams,
                           energy / energy_kwh if energy_kwh > 0 else 1 / len(groups)))
    return sorted(out, key=lambda g: -g.energy_kwh)


def _buckets(first: datetime, last: datetime) -> tuple[str, timedelta]:
    span = (last - first).total_seconds()
    for name, step in (("minute", 60), ("hour", 3600), ("day", 86400)):
        if span <= 48 * step:
            return name, timedelta(seconds=step)
    return "month", timedelta(days=30)


def _floor(t: datetime, bucket: str) -> datetime:
    t = t.astimezone(timezone.utc)
    if bucket == "minute":
        return t.replace(second=0, microsecond=0)
    if bucket == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def summarise(records: list[dict[str, Any]], where: str = "log") -> Summary:
    parsed = [_row(r, f"{where}: row {n}") for n, r in enumerate(records, 2)]
    rows = _last_of_each_span([r for r in parsed if not r.task])
    tasks = [r for r in parsed if r.task]
    if not rows:
        raise LogError(f"{where}: no rows to report on")
    first = min(r.end - timedelta(seconds=r.duration_s) for r in rows)
    last = max(r.end for r in rows)
    by_kind: dict[str, float] = {}
    for k, _ in KINDS:
        total = sum(r.kinds[k] for r in rows)
        if total:
            by_kind[k] = total
    by_device: dict[str, dict[str, Any]] = {}
    for r in rows:
        for dev, d in r.devices.items():
            if not isinstance(d, dict):
                continue
            acc = by_device.setdefault(dev, {"kind": d.get("kind", ""),
                                             "source": d.get("source", ""),
                                             "estimated": bool(d.get("estimated")),
                                             "energy_kwh": 0.0, "error_kwh": 0.0,
                                             "has_error": False})
            kwh = _num(d.get("energy"))
            acc["energy_kwh"] += kwh
            err = _num(d.get("relative_error"), -1)
            if 0 <= err <= 10:
                acc["error_kwh"] += err * kwh
                acc["has_error"] = True
    energy = sum(r.energy_kwh for r in rows)
    with_error = [r for r in rows if r.error is not None]
    known = sum(r.energy_kwh for r in with_error)
    energy_error = (sum(r.error * r.energy_kwh for r in with_error) / known
                    if with_error and known > 0 else None)
    facility = sum(r.energy_kwh * r.pue for r in rows)
    grams = sum(r.emissions_g for r in rows)
    grids = _grids(rows, energy)
    bucket, _ = _buckets(first, last)
    over: dict[datetime, list[float]] = {}
    for r in rows:
        acc = over.setdefault(_floor(r.end, bucket), [0.0, 0.0])
        acc[0] += r.energy_kwh
        acc[1] += r.emissions_g
    return Summary(
        rows=rows, tasks=tasks, first=first, last=last,
        duration_s=sum(r.duration_s for r in rows), energy_kwh=energy, facility_kwh=facility,
        emissions_g=grams, runs=len({r.run_id for r in rows}), by_kind=by_kind,
        by_device=by_device, grids=grids,
        places=mixed(facility, grams, [(g.intensity, g.share) for g in grids]),
        equivalents=equivalents(grams, facility),
        over_time=[(t, e, g) for t, (e, g) in sorted(over.items())], bucket=bucket,
        measured_kwh=sum(r.measured_kwh for r in rows),
        devices_known=any(r.devices for r in rows),
        process_rows=sum(r.tracking_mode == "process" for r in rows),
        energy_relative_error=energy_error)


def measured_note(s: Summary) -> str:
    """How much of the energy was measured, in words; an all-estimated log says so."""
    if not s.devices_known:
        return ("0 % measured: the log does not say which devices were measured (no devices "
                "column, as in CodeCarbon's emissions.csv), so every figure is counted as an "
                "estimate")
    share = s.measured_share * 100
    if s.measured_kwh <= 0:
        return "0 % measured: every figure is an estimate"
    if share >= 99.95:
        return "100 % measured"
    return f"{units.sig(share)} % measured, {units.sig(100 - share)} % estimated"


def intensity_lines(s: Summary) -> list[str]:
    """The intensity in use: one grid, or the mean and each grid with its share."""
    if len(s.grids) == 1:
        i = s.grids[0].intensity
        return [f"{i.g_per_kwh:g} gCO2eq/kWh ({i.region}; {i.source})"]
    out = [f"{units.sig(s.g_per_kwh)} gCO2eq/kWh on average (the rows' emissions over their "
           f"energy with PUE), on {len(s.grids)} grids:"]
    for g in s.grids:
        i = g.intensity
        out.append(f"{i.region:<8} {units.sig(i.g_per_kwh):>6} gCO2eq/kWh  "
                   f"{units.sig(g.share * 100):>5} % of the energy  "
                   f"{units.mass(g.emissions_g):>9}  ({i.source})")
    return out


def scope(s: Summary) -> str:
    """Whose energy the totals are: the machine's, or commands' process trees."""
    machine = "whole machine: every process's energy, not only the measured code's"
    if not s.process_rows:
        return machine
    tree = ("the commands' process trees (carbonmeter run): each command's share of the "
            "machine's energy")
    if s.process_rows == len(s.rows):
        return tree
    return f"{s.process_rows} row(s): {tree}; the other {len(s.rows) - s.process_rows}: {machine}"


def show_kwh(kwh: float) -> str:
    """kWh as a person reads it (J, Wh or kWh)."""
    return units.energy(kwh * 3.6e6)
