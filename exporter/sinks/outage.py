"""One log line when a push destination goes down and one when it is back.

A collector or Pushgateway that is down fails every interval; a line per attempt
would bury everything else in the log. What an operator needs is when it started,
why, and when it ended.
"""

from __future__ import annotations

import logging
import threading
import time


class Outage:
    """Tracks success and failure of repeated sends to one destination."""

    def __init__(self, log: logging.Logger, what: str, every: float) -> None:
        self.log = log
        self.what = what  # "OTLP export to http://collector:4318/v1/metrics"
        self.every = every
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic time of the first failure
        self.failures = 0  # failed sends in the current outage

    def failed(self, reason: str) -> None:
        with self._lock:
            self.failures += 1
            if self._since is not None:
                return
            self._since = time.monotonic()
        self.log.warning("%s failing: %s; retrying every %gs, logged again when it recovers",
                         self.what, reason, self.every)

    def succeeded(self) -> None:
        with self._lock:
            if self._since is None:
                return
            lasted, failures = time.monotonic() - self._since, self.failures
            self._since, self.failures = None, 0
        self.log.warning("%s recovered after %.1fs (%d failed attempt%s)", self.what, lasted,
                         failures, "" if failures == 1 else "s")
