"""bcrypt checks off the event loop, so that guessing passwords cannot starve a scrape.

bcrypt costs tens of milliseconds by design. Every credential not seen before is checked
on a few threads, and the work they are given is bounded: at most QUEUE_DEPTH checks wait
(a request beyond that is answered 503 at once), identical credentials waiting together
share one check, a check whose client has hung up is dropped unrun, and a credential that
failed is remembered for a while (BasicAuth) so repeating it costs nothing.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from carbonmeter.server.webconfig import BasicAuth

# bcrypt releases the GIL: checks run beside the loop, on all but one core (two at most),
# so a flood of guesses never takes the core that serves scrapes.
WORKERS = max(1, min(2, (os.cpu_count() or 1) - 1))
QUEUE_DEPTH = 16  # at cost 10 (~70 ms) the last one waiting is answered within ~0.6 s


class Full(Exception):
    """Too many checks are waiting: answer 503, check nothing."""


class Checks:
    """Runs `auth.check` for headers submitted from the event loop."""

    def __init__(self, auth: BasicAuth, *, workers: int = WORKERS,
                 depth: int = QUEUE_DEPTH) -> None:
        self.auth = auth
        self.workers = workers
        self.depth = depth
        self.run = 0  # bcrypt checks run (for tests and the curious)
        self.dropped = 0  # checks dropped because their client had gone
        self._waiting: collections.OrderedDict[str, _Waiting] = collections.OrderedDict()
        self._cv = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, header: str, gone: Callable[[], bool]) -> asyncio.Future[bool]:
        """A future of the check of `header` (on the running loop); `gone()` says, from any
        thread, that its client no longer waits. Raises Full when the queue is full."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        with self._cv:
            w = self._waiting.get(header)
            if w is None:
                if len(self._waiting) >= self.depth:
                    raise Full
                w = self._waiting[header] = _Waiting(header)
                self._start()
                self._cv.notify()
            w.clients.append((loop, fut, gone))
        return fut

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _start(self) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        if len(self._threads) < self.workers and len(self._threads) < len(self._waiting):
            t = threading.Thread(target=self._work, name="bcrypt", daemon=True)
            t.start()
            self._threads.append(t)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                _, w = self._waiting.popitem(last=False)
            clients = [c for c in w.clients if not c[2]()]
            if not clients:  # everyone who asked has hung up: nothing to check for
                self.dropped += 1
                ok = False
            else:
                self.run += 1
                try:
                    ok = self.auth.check(w.header)
                except Exception:  # a damaged header or hash: refused, never a dead worker
                    ok = False
            for loop, fut, _ in w.clients:
                loop.call_soon_threadsafe(_settle, fut, ok)


class _Waiting:
    __slots__ = ("clients", "header")

    def __init__(self, header: str) -> None:
        self.header = header
        # clients may join until a worker takes the check; appended under the condition
        self.clients: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[bool],
                                 Callable[[], bool]]] = []


def _settle(fut: asyncio.Future[bool], ok: bool) -> None:
    if not fut.done():
        fut.set_result(ok)
