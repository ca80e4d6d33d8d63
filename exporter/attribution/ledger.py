"""Cumulative totals per workload, with bounded cardinality and counters that never go back.

A workload gets its own series while it is among the `top_n` live workloads by energy since
it appeared, has spent at least `min_energy_j`, has known names, and its labels are not in use
by another series. Otherwise its interval energy goes to the `other` series. A series keeps its
value when its workload drops out and continues from it if the workload comes back; the energy
spent in between stays in `other`, so no counter goes back and nothing is counted twice. An
ended workload's series is kept until a sink has exported it once after its last interval
(or for an hour when nothing exports), then dropped. `hidden()` says how much energy the
series not shown hold, so the shown rows plus it always add up to everything accounted.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping

from exporter.attribution.model import HOST, OTHER, UNATTRIBUTED, Key
from exporter.attribution.view import Identity, WorkloadRow

KEEP_UNEXPORTED_S = 3600.0
SPECIAL = {HOST: "host", OTHER: "other", UNATTRIBUTED: "unattributed"}


class _Entry:
    __slots__ = ("ended_at", "ended_clock", "identity", "power", "power_at", "seen", "series",
                 "total", "tracked")

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.total = 0.0  # all energy since it appeared, for ranking
        self.series: dict[str, list[float]] | None = None  # kind -> [J, g] in its series
        self.power: dict[str, float] | None = None  # this interval's, when power_at is it
        self.power_at = 0
        self.tracked = False  # has its own series now
        self.seen = 0  # last interval it was present
        self.ended_at = 0  # interval it was found gone (0: alive)
        self.ended_clock = 0.0


class Ledger:
    def __init__(self, *, top_n: int, min_energy_j: float, host_row: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.top_n = top_n
        self.min_energy_j = min_energy_j
        self.clock = clock
        self.interval = 0
        self.exported = 0  # the last interval a sink exported
        self._dropped: dict[str, list[float]] = {}  # kind -> [J, g] of series dropped
        self.kinds: list[str] = []
        self._kind_set: set[str] = set()
        self._entries: dict[Key, _Entry] = {}
        # host is left out where everything but the watched workloads is `other` (scope self)
        self._special = {k: _Entry(Identity(name, None)) for k, name in SPECIAL.items()
                         if host_row or k != HOST}
        for e in self._special.values():
            e.tracked = True
            e.series = {}

    def ack(self, interval: int) -> None:
        if interval > self.exported:
            self.exported = interval

    def record(self, present: Mapping[Key, Identity], energy: Mapping[str, Mapping[Key, float]],
               power: Mapping[str, Mapping[Key, float]], g_per_j: float) -> None:
        """Close one interval: `present` are the workloads seen now; `energy` and `power` the
        joules and watts each key (workloads, ended ones included, and the special keys) gets
        for the interval, per kind of device; `g_per_j` the interval's CO2eq per joule."""
        self.interval = n = self.interval + 1
        entries = self._entries
        for key, ident in present.items():
            e = entries.get(key)
            if e is None:
                e = entries[key] = _Entry(ident)
            elif e.identity is not ident and e.identity != ident:
                e.identity = ident
            e.seen = n
        for kind, by_key in energy.items():
            if kind not in self._kind_set:
                self._kind_set.add(kind)
                self.kinds.append(kind)
            for key, joules in by_key.items():
                e = entries.get(key)
                if e is not None:
                    e.total += joules
        now = self.clock()
        for e in entries.values():
            if e.seen < n and not e.ended_at:
                e.ended_at, e.ended_clock = n, now
        self._drop(now)
        self._select()
        other = self._special[OTHER]
        special = self._special
        for kind, by_key in energy.items():
            watts = power[kind]
            for key, joules in by_key.items():
                e = special.get(key) or entries.get(key)
                if e is None or not e.tracked:
                    e = other
                series = e.series
                if series is None:
                    series = e.series = {}
                acc = series.get(kind)
                if acc is None:
                    acc = series[kind] = [0.0, 0.0]
                acc[0] += joules
                acc[1] += joules * g_per_j
                if e.power_at != n:
                    e.power_at = n
                    e.power = {}
                e.power[kind] = e.power.get(kind, 0.0) + watts[key]

    def _select(self) -> None:
        """Who has a series this interval: ended series stay (not counted in top_n)."""
        taken = set()
        alive = []
        floor = self.min_energy_j
        for e in self._entries.values():
            if e.ended_at:
                if e.tracked:
                    taken.add(e.identity.labels)
            elif e.identity.labels is not None and e.total >= floor:
                alive.append(e)
            else:
                e.tracked = False
        if len(alive) > self.top_n:
            chosen = heapq.nlargest(self.top_n + len(taken), alive, key=lambda e: e.total)
        else:
            chosen = sorted(alive, key=lambda e: e.total, reverse=True)
        keep = set()
        for e in chosen:
            if len(keep) >= self.top_n:
                break
            if e.identity.labels in taken:
                continue
            taken.add(e.identity.labels)
            keep.add(id(e))
        for e in alive:
            e.tracked = id(e) in keep

    def _drop(self, now: float) -> None:
        gone = [k for k, e in self._entries.items() if e.ended_at and (
            not e.tracked or self.exported >= e.ended_at
            or now - e.ended_clock > KEEP_UNEXPORTED_S)]
        for k in gone:
            e = self._entries.pop(k)
            for kind, (joules, grams) in (e.series or {}).items():
                acc = self._dropped.setdefault(kind, [0.0, 0.0])
                acc[0] += joules
                acc[1] += grams

    def hidden(self) -> dict[str, tuple[float, float]]:
        """kind -> (J, g) in series not shown now: dropped ones, and those of live workloads
        out of the top N for now (shown again, from the same value, if they come back)."""
        out = {k: [j, g] for k, (j, g) in self._dropped.items()}
        for e in self._entries.values():
            if not e.tracked and e.series:
                for kind, (joules, grams) in e.series.items():
                    acc = out.setdefault(kind, [0.0, 0.0])
                    acc[0] += joules
                    acc[1] += grams
        return {k: (j, g) for k, (j, g) in out.items()}

    def rows(self, width: int) -> tuple[WorkloadRow, ...]:
        """Every series: the tracked workloads, then host, other and unattributed."""
        out = []
        for e in self._entries.values():
            if not e.tracked or not e.series:
                continue
            ident = e.identity
            power = e.power if e.power_at == self.interval and e.power else {}
            alive = not e.ended_at
            for kind, (joules, grams) in e.series.items():
                out.append(WorkloadRow(ident.workload, ident.labels or ("",) * width, kind,
                                       joules, grams,
                                       power.get(kind, 0.0) if alive else None,
                                       ident.attributes))
        blank = ("",) * width
        for e in self._special.values():
            power = e.power if e.power_at == self.interval and e.power else {}
            series = e.series or {}
            for kind in self.kinds:
                joules, grams = series.get(kind, (0.0, 0.0))
                out.append(WorkloadRow(e.identity.workload, blank, kind, joules, grams,
                                       power.get(kind, 0.0)))
        return tuple(out)
