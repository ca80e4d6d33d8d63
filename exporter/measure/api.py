"""Measure Python code the way you time it.

    from carbonmeter import track, track_emissions, EmissionsTracker

    with track(project_name="train") as t:          # a block
        with t.task("load"):                         # named parts, nested as deep as needed
            ...
    print(t.result.energy_j, t.result.emissions_g, t.result.tasks[0].name)

    @track_emissions(project_name="train")           # a function, each call
    def fit(): ...

    tracker = EmissionsTracker(project_name="train")  # CodeCarbon's interface: change the import
    tracker.start(); ...; kg = tracker.stop()

Every tracker runs the exporter's own probes and accounting (`carbonmeter.measure.meter`),
so a block costs what `carbonmeter serve` would have counted over the same time. Starting one
discovers the probes and reads them once; no thread is started while only energy counters
that never wrap are in use (see `carbonmeter.measure.meter` for when one is).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from carbonmeter.usage import Usage, usage_between

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["EmissionsTracker", "OfflineEmissionsTracker", "Task", "Tracker", "Usage", "track",
           "track_emissions"]


class Task:
    """A named part of a tracked block; `result` is its Usage once it has ended."""

    def __init__(self, name: str, start: Any) -> None:
        self.name = name
        self.result: Usage | None = None
        self._start = start  # the snapshot it began at
        self._children: list[Usage] = []


class Tracker:
    """One measured block. Use `track()` to make one."""

    def __init__(self, *, config: str | os.PathLike[str] | None = None,
                 project_name: str | None = None, experiment_id: str = "",
                 region: str | None = None, pue: float | None = None,
                 interval: float | None = None, output_file: str | os.PathLike[str] | None = None,
                 output_format: str | None = None, gpu_ids: list[int | str] | None = None,
                 name: str = "") -> None:
        from carbonmeter import config as config_module

        overrides: dict[str, Any] = {}
        if region is not None:
            overrides["carbon.region"] = region
        if pue is not None:
            overrides["carbon.pue"] = pue
        if gpu_ids is not None:
            overrides["gpu.devices"] = [str(g) for g in gpu_ids]
        if output_file is not None:
            overrides["emissions_log.path"] = str(output_file)
        if output_format is not None:
            overrides["emissions_log.format"] = output_format
        if project_name is not None:
            overrides["emissions_log.project_name"] = project_name
        self.cfg = config_module.load(config, overrides=overrides)
        from carbonmeter.carbon.resolve import resolve

        resolve(self.cfg.carbon)  # an unknown region fails here, not at start()
        self.interval = interval
        self.name = name
        self.experiment_id = experiment_id
        self.result: Usage | None = None
        self._meter: Any = None
        self._stack: list[Task] = []
        self._tasks: list[Usage] = []  # top-level tasks that have ended
        self._done: list[Usage] = []  # of those, the ones ended since the last flush
        self._start_snap: Any = None
        self._flushed_snap: Any = None
        self._ctx: Any = None

    # -- the block ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._meter is not None

    def start(self) -> Tracker:
        from carbonmeter.measure.meter import Meter
        from carbonmeter.sinks.emissions_log import RowContext, new_run_id

        if self._meter is not None:
            raise RuntimeError("this tracker is already running")
        self._meter = Meter(self.cfg, interval=self.interval)
        self._start_snap = self._flushed_snap = self._meter.start()
        self._ctx = RowContext(self.cfg.emissions_log.project_name, new_run_id(),
                               self.experiment_id)
        self.result = None
        self._tasks, self._done = [], []
        return self

    def stop(self, *, error: str = "") -> Usage:
        """End the block (and any task still open); write the log; the Usage of the block."""
        if self._meter is None:
            raise RuntimeError("this tracker was not started")
        while self._stack:  # tasks still open end with the block
            self._end_task(self._stack[-1], error)
        end = self._meter.stop()
        self._meter = None
        self.result = usage_between(self._start_snap, end, name=self.name,
                                    tasks=tuple(self._tasks), error=error)
        self._publish(self.result, usage_between(self._flushed_snap, end, name=self.name,
                                                 tasks=tuple(self._done), error=error),
                      final=True)
        return self.result

    def flush(self) -> Usage:
        """Write what was spent since the start (or the last flush) without stopping."""
        if self._meter is None:
            raise RuntimeError("this tracker is not running")
        snap = self._meter.read()
        part = usage_between(self._flushed_snap, snap, name=self.name, tasks=tuple(self._done))
        self._flushed_snap, self._done = snap, []
        whole = usage_between(self._start_snap, snap, name=self.name, tasks=tuple(self._tasks))
        self._publish(whole, part, final=False)
        return whole

    def _publish(self, whole: Usage, part: Usage, *, final: bool) -> None:
        """The rows since the last write go to the log; the push at exit gets the whole."""
        from carbonmeter.measure.publish import finished
        from carbonmeter.sinks.emissions_log import open_log

        finished(whole, self._ctx, emissions_log=open_log(self.cfg.emissions_log),
                 cfg=self.cfg, rows_of=part, final=final)

    def __enter__(self) -> Tracker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        self.stop(error=exc_type.__name__ if exc_type is not None else "")

    # -- tasks -------------------------------------------------------------------------------

    def start_task(self, name: str) -> Task:
        """Begin a named part inside the current task (or the block); end it with end_task."""
        if self._meter is None:
            raise RuntimeError("start the tracker before its tasks")
        task = Task(name, self._meter.read())
        self._stack.append(task)
        return task

    def end_task(self, task: Task | None = None) -> Usage:
        """End `task` (default: the innermost open one) and the tasks still open inside it."""
        if not self._stack:
            raise RuntimeError("no task is running")
        task = task or self._stack[-1]
        if task not in self._stack:
            raise RuntimeError(f"task {task.name!r} is not running")
        while self._stack[-1] is not task:
            self._end_task(self._stack[-1], "")
        return self._end_task(task, "")

    def _end_task(self, task: Task, error: str) -> Usage:
        self._stack.pop()
        task.result = usage_between(task._start, self._meter.read(), name=task.name,
                                    tasks=tuple(task._children), error=error)
        if self._stack:
            self._stack[-1]._children.append(task.result)
        else:
            self._tasks.append(task.result)
            self._done.append(task.result)
        return task.result

    @contextmanager
    def task(self, name: str) -> Iterator[Task]:
        """`with t.task("load") as part:` — a named part; `part.result` after the block."""
        task = self.start_task(name)
        try:
            yield task
        except BaseException as e:
            if task in self._stack:
                while self._stack[-1] is not task:
                    self._end_task(self._stack[-1], type(e).__name__)
                self._end_task(task, type(e).__name__)
            raise
        else:
            if task in self._stack:
                self.end_task(task)


def track(**kwargs: Any) -> Tracker:
    """A tracker for a `with` block: `with track(project_name="x") as t: ...; t.result`.

    Keywords: config (a YAML file; default: the built-in configuration and CARBONMETER_*
    variables), project_name, experiment_id, region (ISO country code), pue, interval
    (seconds between reads of power sources, default 1), output_file and output_format
    (csv or jsonl: the emissions log; default: the configured `emissions_log`), gpu_ids.
    """
    return Tracker(**kwargs)


def track_emissions(fn: F | None = None, /, **kwargs: Any) -> Any:
    """Decorator: measure every call of the function. `@track_emissions` or
    `@track_emissions(project_name=..., ...)` with the keywords of track() — and, like
    CodeCarbon's, of EmissionsTracker. The last call's Usage is `fn.last_result`."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def measured(*args: Any, **kw: Any) -> Any:
            tracker = _tracker_for(func, kwargs)
            try:
                with tracker:
                    return func(*args, **kw)
            finally:
                measured.last_result = tracker.result  # type: ignore[attr-defined]

        measured.last_result = None  # type: ignore[attr-defined]
        return measured  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


def _tracker_for(func: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """CodeCarbon's keywords make CodeCarbon's tracker (writing emissions.csv, as it does);
    otherwise a track() tracker named after the function."""
    own = set(kwargs) - {"project_name", "experiment_id", "region", "pue", "gpu_ids"}
    if own and own <= CODECARBON_ARGS | IGNORED_CODECARBON_ARGS:
        return EmissionsTracker(**kwargs)
    return Tracker(name=func.__name__, **kwargs)


# -- CodeCarbon's interface ------------------------------------------------------------------

# CodeCarbon keywords carbonmeter honours, and those it accepts and ignores (with a warning)
# so that code written for CodeCarbon runs unchanged.
CODECARBON_ARGS = frozenset({
    "project_name", "measure_power_secs", "output_dir", "output_file", "save_to_file",
    "country_iso_code", "region", "pue", "gpu_ids", "experiment_id", "log_level",
    "tracking_mode", "on_csv_write",
})
IGNORED_CODECARBON_ARGS = frozenset({
    "api_call_interval", "api_endpoint", "api_key", "save_to_api", "save_to_logger",
    "logging_logger", "save_to_prometheus", "save_to_logfire", "prometheus_url",
    "output_handlers", "emissions_endpoint", "experiment_name", "co2_signal_api_token",
    "electricitymaps_api_token", "logger_preamble", "default_cpu_power", "force_cpu_power",
    "force_ram_power", "force_mode_cpu_load", "allow_multiple_runs", "offline",
    "cloud_provider", "cloud_region", "country_2letter_iso_code", "rapl_include_dram",
    "rapl_prefer_psys", "api_run_id",
})


class EmissionsTracker:
    """CodeCarbon's EmissionsTracker, on carbonmeter's measurements.

    Like CodeCarbon it writes a row to `output_dir/output_file` (emissions.csv) at stop()
    and flush() unless save_to_file=False, and stop() returns the emissions in kg CO2eq.
    carbonmeter's rows keep CodeCarbon's columns; a file with CodeCarbon's own header is
    renamed aside (see carbonmeter.sinks.emissions_log). `region` (a country here) and
    `country_iso_code` set the grid; `measure_power_secs` how often power sources are read.
    """

    def __init__(self, project_name: str | None = None, measure_power_secs: float | None = None,
                 output_dir: str | os.PathLike[str] = ".", output_file: str = "emissions.csv",
                 save_to_file: bool = True, country_iso_code: str | None = None,
                 region: str | None = None, pue: float | None = None,
                 gpu_ids: list[int | str] | None = None, experiment_id: str = "",
                 log_level: str | int | None = None, tracking_mode: str = "machine",
                 on_csv_write: str = "append", *, config: str | os.PathLike[str] | None = None,
                 **ignored: Any) -> None:
        unknown = sorted(set(ignored) - IGNORED_CODECARBON_ARGS)
        if unknown:
            raise TypeError(f"EmissionsTracker() got an unexpected keyword argument "
                            f"'{unknown[0]}'")
        if log_level is not None:
            level = log_level.upper() if isinstance(log_level, str) else log_level
            logging.getLogger("carbonmeter").setLevel(level)
        for key in sorted(ignored):
            log.warning("carbonmeter's EmissionsTracker ignores CodeCarbon's %s", key)
        if tracking_mode != "machine":
            log.warning("tracking_mode=%r: carbonmeter does not attribute energy to "
                        "processes yet; it measures the whole machine", tracking_mode)
        if on_csv_write != "append":
            log.warning("on_csv_write=%r: carbonmeter only appends rows", on_csv_write)
        self._tracker = Tracker(
            config=config, project_name=project_name, experiment_id=experiment_id,
            region=region or country_iso_code, pue=pue, interval=measure_power_secs,
            output_file=Path(output_dir) / output_file if save_to_file else None,
            gpu_ids=gpu_ids)
        if not save_to_file:  # not even the configured log: CodeCarbon writes nothing then
            self._tracker.cfg = _without_log(self._tracker.cfg)
        self.final_emissions: float | None = None
        self.final_emissions_data: Usage | None = None
        self._tasks: dict[str, Task] = {}
        self._started = 0.0

    def start(self) -> None:
        self._tracker.start()
        self._started = time.time()

    def stop(self) -> float | None:
        """End the measurement; the emissions in kg CO2eq (None if it was not started)."""
        if not self._tracker.running:  # CodeCarbon warns and returns None
            log.warning("EmissionsTracker.stop() without start(): nothing was measured")
            return None
        usage = self._tracker.stop()
        self.final_emissions_data = usage
        self.final_emissions = usage.emissions_kg
        return self.final_emissions

    def flush(self) -> float | None:
        """Write the emissions so far without stopping; kg CO2eq since start()."""
        if not self._tracker.running:
            log.warning("EmissionsTracker.flush() before start(): nothing to write")
            return None
        return self._tracker.flush().emissions_kg

    def start_task(self, task_name: str = "") -> None:
        name = task_name or f"task-{len(self._tasks) + 1}"
        self._tasks[name] = self._tracker.start_task(name)

    def stop_task(self, task_name: str | None = None) -> Usage:
        task = self._tasks.pop(task_name) if task_name else None
        return self._tracker.end_task(task)

    def __enter__(self) -> EmissionsTracker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._tracker.running:
            usage = self._tracker.stop(error=exc_type.__name__ if exc_type else "")
            self.final_emissions_data = usage
            self.final_emissions = usage.emissions_kg

    @property
    def result(self) -> Usage | None:
        return self._tracker.result


OfflineEmissionsTracker = EmissionsTracker  # CodeCarbon's offline variant takes the same keywords


def _without_log(cfg: Any) -> Any:
    import dataclasses

    return dataclasses.replace(cfg, emissions_log=dataclasses.replace(cfg.emissions_log,
                                                                      path=None))
