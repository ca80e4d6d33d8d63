"""Steps done every so often (a checkpoint, a log row, a push, a fetch), paced by the sampler.

Every wake-up of an idle process costs more than the Python it then runs (on a virtual
machine, about 0.1 ms: the timer, the context switch, cold caches), so `serve` has one clock,
the sampling loop: after each sample it calls `Ticks.poke()`, which runs what is due. A step
that writes a local file (`inline`) runs there, on the sampler's thread, after the sample is
published: it takes milliseconds, and a late sample loses nothing (the counters carry the
energy). A step that waits on the network has a worker thread of its own, woken by an event,
never a timeout, so a dead endpoint delays nothing else. A `Periodic` that no `Ticks` drives
(a test, a poller started on its own) keeps time on its own thread.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class Periodic:
    """Calls `tick()` every `interval` seconds until close(), which then calls `final()`
    once on the caller's thread.

    `tick()` may return the seconds to wait before the next (a backoff); None keeps the
    schedule. `first` is the wait before the first tick (default: one interval). An
    exception in tick() is logged and the schedule goes on: a bug must not end a sink.
    Driven by `Ticks`, a step runs at the first sample at or after the time it is due.
    """

    inline = False  # True: driven, tick() runs on the sampler's thread (a local write)

    def __init__(self, name: str, interval: float, *, first: float | None = None) -> None:
        self.name = name
        self.interval = interval
        self._first = interval if first is None else first
        self._due = float("inf")  # monotonic time of the next tick
        self.driven = False  # set by Ticks.add(): its pokes, not a timer, start each tick
        self._wake = threading.Event()
        self._busy = False  # a tick was handed to the worker and has not finished
        self._closing = False
        self._thread: threading.Thread | None = None

    def tick(self) -> float | None:
        raise NotImplementedError

    def final(self) -> None:
        """What close() does after the thread has ended: by default, one more tick."""
        self.tick()

    def start(self) -> None:
        self._due = time.monotonic() + self._first
        if self.driven and self.inline:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if self.driven and self._first <= 0:  # at once, not at the next sample
            self.poke(time.monotonic())

    def poke(self, now: float) -> None:
        """From the driver: run the tick if it is due (here, or by waking the worker)."""
        if now < self._due or self._busy or self._closing:
            return
        if self.inline:
            self._step()
        else:
            self._busy = True
            self._wake.set()

    def _step(self) -> None:
        try:
            delay = self.tick()
        except Exception:
            log.exception("%s failed; trying again in %gs", self.name, self.interval)
            delay = None
        now = time.monotonic()
        if delay is not None:
            self._due = now + delay
        else:  # on the planned schedule, so late ticks do not drift; never bunched
            self._due += self.interval
            if self._due <= now:
                self._due = now + self.interval

    def _run(self) -> None:
        while True:
            if self.driven:
                self._wake.wait()
            else:
                self._wake.wait(max(0.0, self._due - time.monotonic()))
            if self._closing:
                return
            self._wake.clear()
            if self.driven or time.monotonic() >= self._due:
                self._step()
            self._busy = False

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (waiting at most `timeout` for a tick in progress), then final()."""
        self._closing = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        self.final()


class Ticks:
    """What the sampling loop runs after each sample: every driven `Periodic` that is due."""

    def __init__(self) -> None:
        self._steps: list[Periodic] = []

    def add(self, step: Periodic) -> None:
        """Call before step.start()."""
        step.driven = True
        self._steps.append(step)

    def poke(self) -> None:
        now = time.monotonic()
        for step in self._steps:
            step.poke(now)
