"""Each probe reads on a thread of its own, so one that hangs costs the loop a timeout once.

A read that does not return in time is abandoned, not killed (Python cannot kill a
thread stuck in a driver call): the probe stays "busy" and is never read a second
time until that read returns, so a hung NVML call cannot pile up threads. The worker
thread lives as long as the probe; a healthy read costs two lock hand-offs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from carbonmeter.probes.base import Probe

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one job returned (or raised), and when it finished."""

    value: Any
    error: BaseException | None
    t: float  # the sampler's clock when the job returned
    wall: float


class GuardedProbe:
    """Runs jobs (reads, the final close) for one probe on its worker thread."""

    def __init__(self, probe: Probe, clock: Callable[[], float], *, inline: bool = False) -> None:
        self.probe = probe
        # inline: jobs run in the caller's thread, unguarded (a short measurement of code,
        # which promises to add no thread where it needs none).
        self.inline = inline
        self.name = probe.name
        self._clock = clock
        # Bare locks as binary semaphores: cheaper hand-offs than Events (no Condition, no
        # waiter lock allocated per wait), which matters at 10 samples a second.
        self._wake = threading.Lock()
        self._wake.acquire()  # released to start a job
        self._done = threading.Lock()
        self._done.acquire()  # released when a job has finished
        self._job: Callable[[], Any] | None = None
        self._outcome: Outcome | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self.busy = False  # a job is running, maybe stuck in the driver

    def submit(self, job: Callable[[], Any]) -> bool:
        """Start `job`; False when the previous one has not returned yet."""
        if self.busy or self._closing:
            return False
        if self.inline:
            self._done.acquire(blocking=False)
            self._job = job
            self._run_job()
            return True
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=f"probe-{self.name}",
                                            daemon=True)
            self._thread.start()
        self._done.acquire(blocking=False)  # consume a late release from an abandoned job
        self.busy = True
        self._outcome = None
        self._job = job
        self._wake.release()
        return True

    def wait(self, timeout: float) -> Outcome | None:
        """The outcome of the submitted job, or None when it is still running."""
        if not self._done.acquire(timeout=max(0.0, timeout)):
            return None
        return self._outcome

    def _work(self) -> None:
        while True:
            self._wake.acquire()
            if self._job is None:
                return  # close() asked the thread to end
            self._run_job()

    def _run_job(self) -> None:
        job, self._job = self._job, None
        try:
            value, error = job(), None
        except BaseException as e:  # a probe must never end its thread
            value, error = None, e
        self._outcome = Outcome(value, error, self._clock(), time.time())
        # Order matters: `done` before `busy`, so that once submit() sees the probe
        # idle, this job's release has happened and submit() can consume it.
        self._done.release()
        self.busy = False

    def close(self, timeout: float) -> None:
        """Close the probe on its thread, waiting at most `timeout`; a probe whose read is
        stuck is not closed (closing under a running driver call is unsafe)."""
        if self.busy:
            log.warning("probe %s: a read is still stuck; leaving it unclosed", self.name)
        elif self.submit(self.probe.close):
            outcome = self.wait(timeout)
            if outcome is None:
                log.warning("probe %s: close did not return within %g s", self.name, timeout)
            elif outcome.error is not None:
                log.debug("closing %s: %s", self.name, outcome.error)
        self._closing = True
        if not self.busy and self._thread is not None:
            self._job = None
            self._wake.release()
