"""Measure Python code the way you time it.

    from carbonmeter import track, track_emissions, EmissionsTracker

    with track(project_name="train") as t:          # a block
        with t.task("load"):                         # named parts, nested as deep as needed
            ...
    print(t.result.energy_j, t.result.emissions_g, t.result.tasks[0].name)

    @track_emissions(project_name="train")           # CodeCarbon's: a function, each call
    def fit(): ...

    tracker = EmissionsTracker(project_name="train")  # CodeCarbon's interface: change the import
    tracker.start(); ...; kg = tracker.stop()

`track()` is carbonmeter's own: nested tasks, a `Usage` per block and task, rows in the
configured emissions log. `track_emissions`, `EmissionsTracker` and `OfflineEmissionsTracker`
are CodeCarbon 3.3.2's, drop-in (`carbonmeter.measure.codecarbon`).

Every tracker runs the exporter's own probes and accounting (`carbonmeter.measure.meter`),
so a block costs what `carbonmeter serve` would have counted over the same time. Starting one
discovers the probes and reads them once; no thread is started while only energy counters
that never wrap are in use (see `carbonmeter.measure.meter` for when one is).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from carbonmeter.usage import Usage, usage_between

if TYPE_CHECKING:
    from carbonmeter.measure.codecarbon import (
        EmissionsData,
        EmissionsTracker,
        LoggerOutput,
        OfflineEmissionsTracker,
        OutputMethod,
        track_emissions,
    )

log = logging.getLogger(__name__)

# CodeCarbon's interface (carbonmeter.measure.codecarbon, 15 ms of imports) loads on first use,
# so `from carbonmeter import track` does not pay for it.
_CODECARBON = ("EmissionsData", "EmissionsTracker", "LoggerOutput", "OfflineEmissionsTracker",
               "OutputMethod", "track_emissions")


def __getattr__(name: str) -> Any:
    if name in _CODECARBON:
        from carbonmeter.measure import codecarbon

        value = getattr(codecarbon, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["EmissionsData", "EmissionsTracker", "LoggerOutput", "OfflineEmissionsTracker",
           "OutputMethod", "Task", "Tracker", "Usage", "track", "track_emissions"]


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
        self.cfg = config_module.cached(config, overrides=overrides)
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
        self._flushed_load: Any = None  # the machine's CPU times and memory then
        self._ctx: Any = None

    # -- the block ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._meter is not None

    def start(self) -> Tracker:
        from carbonmeter.measure.meter import Meter
        from carbonmeter.sinks.emissions_log import RowContext, logged_load, new_run_id

        if self._meter is not None:
            raise RuntimeError("this tracker is already running")
        self._meter = Meter(self.cfg, interval=self.interval)
        self._start_snap = self._flushed_snap = self._meter.start()
        self._flushed_load = logged_load(self.cfg.emissions_log)
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
        from carbonmeter.sinks.emissions_log import logged_load, open_log

        load = logged_load(self.cfg.emissions_log)
        finished(whole, self._ctx, emissions_log=open_log(self.cfg.emissions_log),
                 cfg=self.cfg, rows_of=part, final=final, load=(self._flushed_load, load))
        self._flushed_load = load

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
    variables), project_name, experiment_id, region (a bundled grid region), pue, interval
    (seconds between reads of power sources, default 1), output_file and output_format
    (csv or jsonl: the emissions log; default: the configured `emissions_log`), gpu_ids.
    """
    return Tracker(**kwargs)
