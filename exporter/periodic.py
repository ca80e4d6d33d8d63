"""One thread that does one thing every interval: the idiom of every interval sink and poller.

A push to a Pushgateway, a row of the emissions log, a checkpoint of the totals, a fetch from a
grid API: each waits on its own thread, so a slow disk or a dead endpoint delays nothing else,
and each does one last step when it is closed (the final totals, the last checkpoint).
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Periodic:
    """Calls `tick()` every `interval` seconds on a thread of its own until close(), which
    then calls `final()` once on the caller's thread.

    `tick()` may return the seconds to wait before the next (a backoff); None keeps the
    interval. `first` is the wait before the first tick (default: one interval). An
    exception in tick() is logged and the thread goes on: a bug must not end a sink.
    """

    def __init__(self, name: str, interval: float, *, first: float | None = None) -> None:
        self.name = name
        self.interval = interval
        self._first = interval if first is None else first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> float | None:
        raise NotImplementedError

    def final(self) -> None:
        """What close() does after the thread has ended: by default, one more tick."""
        self.tick()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self._first
        while not self._stop.wait(wait):
            try:
                delay = self.tick()
            except Exception:
                log.exception("%s failed; trying again in %gs", self.name, self.interval)
                delay = None
            wait = self.interval if delay is None else delay

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (waiting at most `timeout` for a tick in progress), then final()."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)
        self.final()
