"""Live intensity: each provider fetched in its own thread, read without waiting.

The sampler asks `LiveSource.current()` once per interval and a scrape reads the snapshot;
neither may wait for the network. So each provider runs in a background thread that keeps
its last good value, and `current()` only compares that value's age with the provider's
staleness: the first fresh one wins, else the static intensity the configuration gives.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from carbonmeter.carbon.intensity import Intensity, IntensitySource, unbelievable
from carbonmeter.carbon.providers.http import Fetched, ProviderError, RetryLater
from carbonmeter.periodic import Periodic
from carbonmeter.snapshot import ProviderStatus

log = logging.getLogger(__name__)


class Fetcher(Protocol):
    name: str

    def fetch(self) -> Fetched: ...


@dataclass(frozen=True, slots=True)
class _Good:
    intensity: Intensity
    at: float  # monotonic time of the fetch
    age0: float  # how old the value was when fetched


class Poller(Periodic):
    """Fetches one provider every `refresh` seconds, the first at once; after a failure,
    retries with exponential backoff and jitter (never sooner than a 429's Retry-After)."""

    def __init__(self, fetcher: Fetcher, *, refresh: float, staleness: float,
                 clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = random.random) -> None:
        super().__init__(f"intensity-{fetcher.name}", refresh, first=0.0)
        self.fetcher = fetcher
        self.name = fetcher.name
        self.refresh = refresh
        self.staleness = staleness
        self.clock = clock
        self.jitter = jitter
        self.backoff_base = min(2.0, refresh)
        self.backoff_cap = max(refresh, self.backoff_base)
        self._good: _Good | None = None
        self._up = False
        self._errors = 0
        self._failures = 0  # in a row
        self._last_error = ""

    def age(self) -> float | None:
        g = self._good
        return None if g is None else g.age0 + (self.clock() - g.at)

    def fresh(self) -> Intensity | None:
        """The last good value if it is younger than the staleness limit."""
        g = self._good
        if g is None or g.age0 + (self.clock() - g.at) > self.staleness:
            return None
        return g.intensity

    def status(self) -> ProviderStatus:
        g = self._good
        return ProviderStatus(self.name, self._up, self._errors,
                              None if g is None else g.intensity, self.age(), self._last_error)

    def poll_once(self) -> float:
        """One fetch; the seconds to wait before the next."""
        try:
            got = self.fetcher.fetch()
        except ProviderError as e:
            return self._failed(str(e), getattr(e, "retry_after", None)
                                if isinstance(e, RetryLater) else None)
        except Exception as e:  # a provider bug must not kill its thread
            return self._failed(f"{type(e).__name__}: {e}", None)
        why = unbelievable(got.intensity.g_per_kwh)
        if why is None and not math.isfinite(got.age_seconds):
            why = f"the value's age {got.age_seconds!r} s is not a number of seconds"
        if why is not None:  # refused like a failed fetch: the last good value stays
            return self._failed(f"refused {why} ({got.intensity.source})", None)
        self._good = _Good(got.intensity, self.clock(), max(got.age_seconds, 0.0))
        if not self._up:
            log.info("intensity provider %s: %g gCO2eq/kWh for %s%s", self.name,
                     got.intensity.g_per_kwh, got.intensity.region,
                     " (marginal)" if got.intensity.signal == "marginal" else "")
        self._up = True
        self._failures = 0
        self._last_error = ""
        return self.refresh

    def _failed(self, message: str, retry_after: float | None) -> float:
        self._errors += 1
        self._failures += 1
        if self._up or message != self._last_error:  # log changes, not every retry
            log.warning("intensity provider %s: %s", self.name, message)
        self._up = False
        self._last_error = message
        delay = min(self.backoff_cap, self.backoff_base * 2 ** (self._failures - 1))
        delay *= 0.5 + self.jitter() / 2  # "equal jitter": spread retries, keep a floor
        return max(delay, retry_after or 0.0)

    def tick(self) -> float:
        return self.poll_once()

    def final(self) -> None:
        """Nothing to send at the end; a fetch in flight ends by its own timeout (the
        thread is a daemon, so close(timeout=0) does not wait for it)."""

class LiveSource:
    """IntensitySource: the first provider with a fresh value, else `fallback`."""

    name = "intensity providers"

    def __init__(self, pollers: list[Poller], fallback: IntensitySource) -> None:
        self.pollers = pollers
        self.fallback = fallback
        self._using: str | None = ""  # provider in use, None for the fallback

    def current(self) -> Intensity:
        for p in self.pollers:
            value = p.fresh()
            if value is not None:
                self._note(p.name)
                return value
        self._note(None)
        return self.fallback.current()

    def _note(self, name: str | None) -> None:
        if name == self._using:
            return
        if name is not None:
            log.info("carbon intensity from provider %s", name)
        elif self._using:  # it was a provider: say why it stopped
            ages = ", ".join(f"{p.name} {'none' if p.age() is None else f'{p.age():.0f} s old'}"
                             for p in self.pollers)
            log.warning("no provider has a value younger than its staleness_seconds (%s); "
                        "using %s", ages, self.fallback.current().source)
        self._using = name

    def statuses(self) -> tuple[ProviderStatus, ...]:
        return tuple(p.status() for p in self.pollers)

    def start(self) -> None:
        for p in self.pollers:
            p.start()

    def close(self) -> None:
        for p in self.pollers:
            p.close(timeout=0)
