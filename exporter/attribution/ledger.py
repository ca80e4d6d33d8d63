"""Cumulative totals per workload, with bounded cardinality and counters that never go back.

A workload gets its own series while it is among the `top_n` live workloads by energy since
it appeared, has spent at least `min_energy_j`, has known names, and its labels are not in use
by another series. Otherwise its interval energy goes to the `other` series. A series keeps its
value when its workload drops out and continues from it if the workload comes back; the energy
spent in between stays in `other`, so no counter goes back and nothing is counted twice. An
ended workload's series is kept until every reader (each sink that exports workloads keeps its
own cursor: `register`, `ack`) has exported it once after its last interval, or for an hour
when they do not, then dropped. `hidden()` says how much energy the
series not shown hold, so the shown rows plus it always add up to everything accounted.

`export()` and `restore()` carry the ledger through a restart (the state file): series continue
from their values, and a workload that is not found again is shown once more and then dropped,
like any ended one.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from typing import Any

from carbonmeter.attribution.model import HOST_KEY, OTHER_KEY, UNATTRIBUTED_KEY, Key
from carbonmeter.attribution.view import Identity, WorkloadRow

KEEP_UNEXPORTED_S = 3600.0
SPECIAL = {HOST_KEY: "host", OTHER_KEY: "other", UNATTRIBUTED_KEY: "unattributed"}
RESTORED = "restored"  # prefixes the keys of restored workloads that cannot come back


class _Entry:
    __slots__ = ("ended_at", "ended_clock", "identity", "power", "power_at", "series", "total",
                 "tracked")

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.total = 0.0  # all energy since it appeared, for ranking
        self.series: dict[str, list[float]] | None = None  # kind -> [J, g] in its series
        self.power: dict[str, float] | None = None  # this interval's, when power_at is it
        self.power_at = 0
        self.tracked = False  # has its own series now
        self.ended_at = 0  # interval it was found gone (0: alive)
        self.ended_clock = 0.0


class Ledger:
    def __init__(self, *, top_n: int, min_energy_j: float, host_row: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.top_n = top_n
        self.min_energy_j = min_energy_j
        self.clock = clock
        self.interval = 0
        self.cursors: dict[str, int] = {}  # reader -> the last interval it exported
        self._dropped: dict[str, list[float]] = {}  # kind -> [J, g] of series dropped
        self.kinds: dict[str, None] = {}  # device kinds seen, in first-seen order
        self._entries: dict[Key, _Entry] = {}
        # host is left out where everything but the watched workloads is `other` (scope self)
        self._special = {k: _Entry(Identity(name, None)) for k, name in SPECIAL.items()
                         if host_row or k != HOST_KEY}
        for e in self._special.values():
            e.tracked = True
            e.series = {}

    def register(self, reader: str) -> None:
        """A sink that exports workload rows; call before the first interval."""
        self.cursors.setdefault(reader, 0)

    def ack(self, reader: str, interval: int) -> None:
        """`reader` has exported the rows of `interval`."""
        if reader in self.cursors and interval > self.cursors[reader]:
            self.cursors[reader] = interval

    def _exported(self, interval: int) -> bool:
        """Every reader has exported the rows of `interval` (or later); False with none."""
        return bool(self.cursors) and min(self.cursors.values()) >= interval

    def record(self, present: Mapping[Key, Identity] | None,
               energy: Mapping[str, Mapping[Key, float]],
               power: Mapping[str, Mapping[Key, float]], g_per_j: float) -> None:
        """Close one interval: `present` are the workloads seen now (None: not known yet, so
        none has ended); `energy` and `power` the joules and watts each key (workloads, ended
        ones included, and the special keys) gets for the interval, per kind of device;
        `g_per_j` the interval's CO2eq per joule."""
        self.interval = n = self.interval + 1
        entries = self._entries
        for key, ident in (present or {}).items():
            e = entries.get(key)
            if e is None:
                e = entries[key] = _Entry(ident)
            elif e.identity is not ident and e.identity != ident:
                e.identity = ident
        for kind, by_key in energy.items():
            self.kinds.setdefault(kind)
            for key, joules in by_key.items():
                e = entries.get(key)
                if e is not None:
                    e.total += joules
        now = self.clock()
        for key in entries.keys() - present.keys() if present is not None else ():
            e = entries[key]
            if not e.ended_at:
                e.ended_at, e.ended_clock = n, now
        self._drop(now)
        self._select()
        other = self._special[OTHER_KEY]
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
            not e.tracked or self._exported(e.ended_at)
            or now - e.ended_clock > KEEP_UNEXPORTED_S)]
        for k in gone:
            _add(self._dropped, self._entries.pop(k).series or {})

    def hidden(self) -> dict[str, tuple[float, float]]:
        """kind -> (J, g) in series not shown now: dropped ones, and those of live workloads
        out of the top N for now (shown again, from the same value, if they come back)."""
        out = _pairs(self._dropped)
        for e in self._entries.values():
            if not e.tracked and e.series:
                _add(out, e.series)
        return {k: (j, g) for k, (j, g) in out.items()}

    def rows(self, width: int) -> tuple[WorkloadRow, ...]:
        """Every series: the tracked workloads, then host, other and unattributed."""
        out = []
        for e in self._entries.values():
            if not e.tracked or not e.series:
                continue
            ident = e.identity
            power = e.power if e.power_at == self.interval and e.power else {}
            alive = not e.ended_at and e.power_at > 0  # restored, not measured yet: unknown
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

    # -- through a restart ----------------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The series as data for the state file (validated by exporter/state.py). Taken
        under the sampler's lock, so it copies only what changes (tuples are JSON lists)."""
        return {
            "kinds": list(self.kinds),
            "special": {SPECIAL[k]: _pairs(e.series) for k, e in self._special.items()},
            "dropped": _pairs(self._dropped),
            "workloads": [{
                "key": key, "workload": e.identity.workload, "labels": e.identity.labels,
                "attributes": e.identity.attributes, "total": e.total, "tracked": e.tracked,
                "ended": bool(e.ended_at), "series": {k: (j, g) for k, (j, g) in e.series.items()},
            } for key, e in self._entries.items() if e.series],
        }

    def restore(self, saved: Mapping[str, Any], *, workloads: bool = True,
                same_boot: bool = True) -> None:
        """Continue from `export()` output; call before the first interval.

        Every series continues from its value. A workload found again (same key) goes on in
        its series; one that is not is shown once more, then dropped. Process keys (PID and
        start time) mean nothing after a reboot, and an ended workload's key may be reused (a
        container restarted under its name): those are kept under keys no workload has. With
        `workloads=False` (the level or scope changed) their series are counted as dropped.
        """
        self.kinds.update(dict.fromkeys(saved["kinds"]))
        by_name = {name: key for key, name in SPECIAL.items()}
        for name, series in saved["special"].items():
            e = self._special.get(by_name[name])
            _add(self._dropped if e is None else e.series, series)  # type: ignore[arg-type]
            self.kinds.update(dict.fromkeys(series))
        _add(self._dropped, saved["dropped"])
        for w in saved["workloads"]:
            key = tuple(w["key"])
            if not workloads:
                _add(self._dropped, w["series"])
                continue
            labels = w["labels"]
            e = _Entry(Identity(w["workload"], None if labels is None else tuple(labels),
                                tuple((a, b) for a, b in w["attributes"])))
            e.total, e.tracked = w["total"], w["tracked"]
            if w["ended"] or (not same_boot and key[0] == "process"):
                key = key if key[0] == RESTORED else (RESTORED, *key)
                # found gone in the first interval: kept until a sink exports it after that
                e.ended_at, e.ended_clock = 1, self.clock()
            e.series = _pairs(w["series"])
            self._entries[key] = e


def _pairs(series: Mapping[str, list[float]] | None) -> dict[str, list[float]]:
    return {kind: [j, g] for kind, (j, g) in (series or {}).items()}


def _add(into: dict[str, list[float]], series: Mapping[str, list[float]]) -> None:
    for kind, (joules, grams) in series.items():
        acc = into.setdefault(kind, [0.0, 0.0])
        acc[0] += joules
        acc[1] += grams
