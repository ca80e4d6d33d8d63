"""Intel CPU package and DRAM energy from Intel Power Gadget's ``PowerLog`` (Windows and Intel
Macs). Intel has discontinued Intel Power Gadget: it gets no updates and new CPUs may not
be supported. On Linux, the rapl probe reads the same counters without it.

``PowerLog -resolution MS -duration S -file LOG`` writes a CSV: a header row, one row per
sample with, per package N, ``Cumulative Processor Energy_N(Joules)``, ``Cumulative IA
Energy_N(Joules)`` (the cores), ``Cumulative GT Energy_N(Joules)`` (the integrated GPU) and
``Cumulative DRAM Energy_N(Joules)`` where the CPU measures DRAM, counted from the start of
the log; then an empty line and a summary (``Cumulative Package Energy_N (Joules) = ...``).
IA and GT are inside the package and never reported beside it.

The probe runs PowerLog for one sampling interval at a time, back to back in a thread, and
adds each finished log's energy to a running total per device, which it reports as an
energy counter; or it follows a log a user runs (``powergadget.log``), counting each new
log from its start when PowerLog starts a new one in the same file.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from carbonmeter.probes.base import (
    Device,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
    limits,
)

log = logging.getLogger(__name__)

DISCONTINUED = ("Intel has discontinued Intel Power Gadget (no updates, and newer CPUs may be "
                "unsupported)")
DEFAULT_COMMANDS = {
    "win32": r"C:\Program Files\Intel\Power Gadget 3.6\PowerLog3.0.exe",
    "darwin": "/Applications/Intel Power Gadget/PowerLog",
}
_COLUMN = re.compile(r"Cumulative (Processor|DRAM) Energy_(\d+)\(Joules\)")
_SUMMARY = re.compile(r"Cumulative (Package|DRAM) Energy_(\d+) \(Joules\) = ([0-9.eE+-]+)")
_HEADER_MARK = "Cumulative Processor Energy_"


def parse_log(text: str) -> tuple[list[str], dict[str, float]]:
    """(device ids in the header, joules per device since the log started) of a PowerLog CSV.

    The summary block is the log's final word; a log cut short (no summary) counts to its
    last complete row."""
    columns: dict[int, str] = {}
    devices: list[str] = []
    last: dict[str, float] = {}
    summary: dict[str, float] = {}
    for line in text.splitlines():
        m = _SUMMARY.match(line.strip())
        if m and _joules(m.group(3)) is not None:
            summary[_device_id(m.group(1), m.group(2))] = float(m.group(3))
        elif _HEADER_MARK in line:
            columns = _columns(line)
            devices = list(columns.values())
        elif columns and line.strip():
            last.update(_row(line, columns))
    return devices, {**last, **summary} if summary else last


class PowerGadgetProbe(Probe):
    """package-N (kind cpu) and dram-N (kind dram) as energy counters."""

    name = "powergadget"

    def __init__(self, *, command: str | None = None, log_file: str | None = None,
                 resolution_ms: float = 1000, interval: float = 15,
                 system: str = sys.platform, machine: str | None = None) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, float] = {}  # J, across logs
        self._errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if log_file:
            self._follow = _Follower(Path(log_file))
            ids = self._follow.devices
            self.modes = {"log": f"following {log_file}", "note": DISCONTINUED}
        else:
            self._follow = None
            self._exe = self._command(command, system, machine)
            self._resolution = str(round(resolution_ms))
            # -duration is whole seconds: one log per interval, each adding its energy.
            self._duration = max(1, min(3600, math.ceil(interval)))
            ids, _ = self._run_once(seconds=1)  # a short first log: does the tool work here?
            self.modes = {"PowerLog": f"{self._exe}, one log per {self._duration} s",
                          "note": DISCONTINUED}
        if not ids:
            raise ProbeUnavailable("the PowerLog CSV has no 'Cumulative Processor Energy' "
                                   "column: not a PowerLog file?")
        self.devices = tuple(_device(i) for i in ids)
        self.covers = frozenset(d.kind for d in self.devices)
        log.warning("powergadget: %s", DISCONTINUED)
        if self._follow is None:
            self._thread = threading.Thread(target=self._loop, name="powergadget", daemon=True)
            self._thread.start()

    def read(self) -> ProbeRead:
        if self._follow is not None:
            try:
                totals = self._follow.totals()
            except OSError as e:
                return ProbeRead([], [f"powergadget: cannot read {self._follow.path}: "
                                      f"{e.strerror or e}"])
            errors: list[str] = []
        else:
            with self._lock:
                totals, errors, self._errors = dict(self._totals), self._errors, []
        readings = [Reading(d, counter_uj=round(totals[d.id] * 1e6))
                    for d in self.devices if d.id in totals]
        return ProbeRead(readings, errors)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- running PowerLog ---------------------------------------------------------------------

    @staticmethod
    def _command(command: str | None, system: str, machine: str | None) -> str:
        if system not in DEFAULT_COMMANDS:
            raise ProbeUnavailable(f"Intel Power Gadget runs on Windows and Intel Macs only "
                                   f"(on Linux, rapl reads the same counters); {DISCONTINUED}")
        if system == "darwin" and (machine or platform.machine()) == "arm64":
            raise ProbeUnavailable("Apple Silicon: Intel Power Gadget is for Intel CPUs "
                                   "(see powermetrics)")
        path = command or DEFAULT_COMMANDS[system]
        exe = shutil.which(path)
        if exe is None:
            raise ProbeUnavailable(f"PowerLog not found at {path}: install Intel Power Gadget "
                                   f"3.6 or set powergadget.command; {DISCONTINUED}")
        return exe

    def _run_once(self, seconds: int) -> tuple[list[str], dict[str, float]]:
        """One PowerLog run of `seconds`: the devices in its log and their energy."""
        fd, name = tempfile.mkstemp(prefix="carbonmeter-powerlog-", suffix=".csv")
        os.close(fd)
        try:
            try:
                done = subprocess.run([self._exe, "-resolution", self._resolution, "-duration",
                                       str(seconds), "-file", name],
                                      capture_output=True, text=True, timeout=seconds + 30)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise ProbeUnavailable(f"PowerLog did not run: {e}") from e
            text = Path(name).read_text(errors="replace")
        finally:
            Path(name).unlink(missing_ok=True)
        if done.returncode != 0 or _HEADER_MARK not in text:
            said = (done.stderr or done.stdout).strip().splitlines()
            raise ProbeUnavailable(f"PowerLog failed ({said[-1] if said else done.returncode}):"
                                   " is the Intel Power Gadget driver installed and running?")
        return parse_log(text)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                _, energy = self._run_once(self._duration)
            except ProbeUnavailable as e:
                with self._lock:
                    self._errors.append(f"powergadget: {e}")
                self._stop.wait(self._duration)
                continue
            with self._lock:
                for device_id, joules in energy.items():
                    self._totals[device_id] = self._totals.get(device_id, 0.0) + joules


class _Follower:
    """A PowerLog CSV that someone else writes: new rows are read as they arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""
        self._seen = b""  # the last bytes read, to notice the file rewritten under us
        self._columns: dict[int, str] = {}
        self._base: dict[str, float] = {}  # J of the logs before the current one
        self._last: dict[str, float] = {}  # J of the current log, from its start
        try:
            self.totals()
        except OSError as e:
            raise ProbeUnavailable(f"cannot read the PowerLog log {path}: "
                                   f"{e.strerror or e}") from e
        self.devices = list(dict.fromkeys(self._columns.values()))

    def totals(self) -> dict[str, float]:
        st = os.stat(self.path)
        with open(self.path, "rb") as f:
            f.seek(self._offset - len(self._seen))
            if (st.st_ino != self._inode or st.st_size < self._offset
                    or f.read(len(self._seen)) != self._seen):  # replaced or rewritten
                self._new_log()
                self._inode, self._offset, self._partial = st.st_ino, 0, b""
                f.seek(0)
            data = f.read()
        self._offset += len(data)
        self._seen = (self._seen + data)[-64:]
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip("\r")
            if _HEADER_MARK in line:  # PowerLog started a new log here
                self._new_log()
                self._columns = _columns(line)
            elif self._columns and line.strip():
                self._last.update(_row(line, self._columns))
        return {d: self._base.get(d, 0.0) + self._last.get(d, 0.0)
                for d in {*self._base, *self._last}}

    def _new_log(self) -> None:
        for d, joules in self._last.items():
            self._base[d] = self._base.get(d, 0.0) + joules
        self._last = {}


def _columns(header: str) -> dict[int, str]:
    out = {}
    for i, name in enumerate(header.split(",")):
        m = _COLUMN.fullmatch(name.strip())
        if m:
            out[i] = _device_id(m.group(1), m.group(2))
    return out


# A cumulative energy beyond this (a 1 kW package running 30 years) is not a measurement.
MAX_JOULES = 1e12


def _joules(text: str) -> float | None:
    """A cumulative energy cell: a finite number of joules from 0 to MAX_JOULES, else None
    ("nan", "inf", "-3" and "1e308" parse as floats but were never measured)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= MAX_JOULES else None  # false for nan too


def _row(line: str, columns: dict[int, str]) -> dict[str, float]:
    cells = line.split(",")
    out = {}
    for i, device_id in columns.items():
        value = _joules(cells[i]) if i < len(cells) else None
        if value is None:  # a summary line, a row cut short, or a value never measured
            return {}
        out[device_id] = value
    return out


def _device_id(domain: str, n: str) -> str:
    return f"dram-{n}" if domain == "DRAM" else f"package-{n}"


def _device(device_id: str) -> Device:
    if device_id.startswith("dram"):
        return Device(device_id, "dram", "powergadget", name="DRAM")
    return Device(device_id, "cpu", "powergadget", name="Intel processor package")


@dataclass(frozen=True)
class PowergadgetConfig:
    """Section `powergadget` (Intel Power Gadget on Windows and Intel Macs)."""

    command: str | None = field(**limits(check="path"))  # None: the installer's default
    log: str | None = field(**limits(check="path"))  # a PowerLog CSV to follow instead
    resolution_ms: float = field(**limits(min=50, max=60_000))


def _make(settings: PowergadgetConfig, ctx: ProbeContext) -> PowerGadgetProbe:
    return PowerGadgetProbe(command=settings.command, log_file=settings.log,
                            resolution_ms=settings.resolution_ms, interval=ctx.interval)


SPEC = ProbeSpec("powergadget", order=60, make=_make, section="powergadget",
                 settings=PowergadgetConfig)
