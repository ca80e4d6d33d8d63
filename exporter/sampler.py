"""The one loop that touches hardware: read every probe, account, publish a snapshot.

Sinks never call probes; they read `latest`, which is swapped whole after each
sample. Each probe reads on its own thread under a timeout (exporter/guard.py), so
a hung or failing probe delays neither the others nor the loop; a failing probe is
retried with exponential backoff. Intervals are timed on the boot-time clock, which
is monotonic and counts suspend, so a wall-clock jump neither creates nor loses
energy, and a suspend or stopped process shows as a gap (exporter/accounting.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from carbonmeter import state
from carbonmeter.accounting import Accounting, EnergyDelta, Refused
from carbonmeter.carbon.intensity import Intensity, IntensitySource
from carbonmeter.embodied import Embodied
from carbonmeter.guard import GuardedProbe
from carbonmeter.periodic import Ticks
from carbonmeter.probes.base import HOST, Probe, ProbeRead
from carbonmeter.snapshot import (
    ProbeStatus,
    ProviderStatus,
    Snapshot,
    host_estimated,
    host_totals,
)

if TYPE_CHECKING:
    from carbonmeter.attribution import Attributor

log = logging.getLogger(__name__)

BACKOFF_MAX_S = 60.0  # a failing probe is retried at least this often


class Sampler:
    name = "sampler"

    def __init__(self, probes: list[Probe], intensity: IntensitySource, *, pue: float,
                 interval: float, embodied: Embodied | None = None,
                 providers: Callable[[], tuple[ProviderStatus, ...]] | None = None,
                 attributor: Attributor | None = None, probe_timeout: float | None = 2.0,
                 unavailable: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = state.clock) -> None:
        self.probes = probes
        # probe -> why it cannot run here: where a checkpoint holds devices it measured, it
        # is exported as down with that reason and their time counts as unmeasured
        self.unavailable = dict(unavailable or {})
        self._orphans: dict[str, list[str]] = {}  # such a probe -> its restored device ids
        self.attributor = attributor  # shares each interval's energy among workloads
        self.intensity = intensity
        self.interval = interval
        self.embodied = embodied
        self.providers = providers  # live providers' status; reading it never waits
        # A read may take at most the interval: a probe slower than that cannot keep up.
        # None: probes are read in the sampling thread, unguarded (a measurement of code,
        # which adds no thread it does not need).
        self.probe_timeout = interval if probe_timeout is None else min(probe_timeout, interval)
        self.clock = clock
        # Two missed intervals and a second more: a stopped or suspended process, not a
        # late sample; the time is a gap, judged like downtime.
        self.accounting = Accounting(pue, gap_seconds=2 * interval + 1.0)
        # Decided once from what the probes found, not from what answered this interval, so
        # the host counters never switch between a meter and a sum (and never go back).
        self.metered = any(d.scope == HOST for p in probes for d in p.devices)
        self._guards = [GuardedProbe(p, clock, inline=probe_timeout is None
                                     or not p.may_block) for p in probes]
        self._submit_order = sorted(self._guards, key=lambda g: not g.inline)
        self._errors = {p.name: 0 for p in probes}
        self._last_error = {p.name: "" for p in probes}
        self._up = {p.name: True for p in probes}
        self._failures = {p.name: 0 for p in probes}
        self._skip = {p.name: 0 for p in probes}  # samples to skip before the next try
        self._seen: set[str] = set()
        self._statuses: tuple[ProbeStatus, ...] | None = None  # None: to be made again
        self._seq = 0
        # sample() may also be called from outside the loop (`carbonmeter run`, the API
        # reading at a task boundary): one sample at a time keeps the accounting whole.
        self._sample_lock = threading.Lock()
        self._lock = threading.Lock()  # accounting: the sampler writes, checkpoints read
        # What else runs on the loop's clock, after each sample (carbonmeter.periodic): the
        # loop is the process's one timer.
        self.ticks = Ticks()
        # A bare lock, held until close(): the loop's one timed wait per interval is an
        # acquire with a timeout, with no Condition and no waiter lock made each time.
        self._stop = threading.Lock()
        self._stop.acquire()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()  # when the loop last finished a sample
        self.latest: Snapshot = self._publish(intensity.current())

    def restore(self, restored: state.Restored, boot: str) -> None:
        """Continue the totals of a checkpoint; call before the first sample."""
        same_boot = bool(boot) and restored.boot_id == boot
        with self._lock:
            self.accounting.restore(restored.devices, same_boot=same_boot, now=self.clock(),
                                    wall_now=time.time())
            if self.attributor is not None and restored.attribution is not None:
                self.attributor.restore(restored.attribution, same_boot=same_boot)
            if self.embodied is not None:
                self.embodied.restore(restored.embodied)
            self._orphans = self._restored_orphans(restored.devices)
            self._statuses = None
            self.latest = self._publish(self.latest.intensity)
        what = f"{len(restored.devices)} device(s)"
        if self.attributor is not None and restored.attribution is not None:
            what += f", {len(restored.attribution['workloads'])} workload(s)"
        if self.embodied is not None and restored.embodied:
            what += ", embodied emissions"
        log.info("state: restored the totals of %s, checkpointed %.1f s ago%s", what,
                 max(0.0, time.time() - restored.written_unix),
                 "" if same_boot else " before a reboot: time since then is unmeasured")

    def _restored_orphans(self, devices: list[dict[str, Any]]) -> dict[str, list[str]]:
        """Restored devices of probes that cannot run now, by probe; each probe said once."""
        read = {d.id for p in self.probes for d in p.devices}
        running = {p.name for p in self.probes}
        out: dict[str, list[str]] = {}
        for d in devices:
            if d["source"] in self.unavailable and d["source"] not in running and \
                    d["id"] not in read:
                out.setdefault(d["source"], []).append(d["id"])
        for name, ids in out.items():
            log.warning("probe %s: cannot run here (%s), but the state file holds %d device(s) "
                        "it measured (%s): exported as down, their time counted as unmeasured",
                        name, self.unavailable[name], len(ids), ", ".join(ids))
        return out

    def export(self) -> dict[str, Any]:
        """A checkpoint: per-device tracks, and the workload ledger and embodied totals where
        they run, all as of one sample."""
        with self._lock:
            out: dict[str, Any] = {"devices": self.accounting.export()}
            if self.attributor is not None:
                out["attribution"] = self.attributor.export()
            if self.embodied is not None:
                out["embodied"] = dict(self.embodied.grams)
            return out

    def sample(self) -> Snapshot:
        """Read every probe once and publish the new totals."""
        with self._sample_lock:
            return self._sample()

    def _sample(self) -> Snapshot:
        started = set()
        # The reads done here first, then those handed to a thread: a thread woken while
        # this one still runs Python would only wait for the interpreter lock.
        for g in self._submit_order:
            if self._skip[g.name] > 0:
                self._skip[g.name] -= 1
            elif g.submit(g.probe.read):  # False while an abandoned read is still stuck
                started.add(g)
        deadline = time.monotonic() + self.probe_timeout
        outcomes = [(g, g.wait(deadline - time.monotonic())) for g in self._guards
                    if g in started]
        intensity = self.intensity.current()  # one value prices this whole interval
        read_now: set[str] = set()
        deltas: list[EnergyDelta] = []
        with self._lock:
            for g, outcome in outcomes:
                name = g.name
                if outcome is None:
                    self._fail(name, f"read did not return within {self.probe_timeout:g} s; "
                               "not read again until it does", count=1)
                    continue
                if outcome.error is not None:
                    e = outcome.error
                    self._fail(name, f"{type(e).__name__}: {e}", count=1)
                    continue
                result: ProbeRead = outcome.value
                errors = list(result.errors)
                good = 0
                for reading in result.readings:
                    try:
                        delta = self.accounting.add(reading, outcome.t, intensity, outcome.wall)
                    except Refused as e:  # not read: the last good reading stays the baseline
                        errors.append(f"{name} {reading.device.id}: {e}")
                        continue
                    good += 1
                    if delta is not None:
                        deltas.append(delta)
                    read_now.add(reading.device.id)
                if errors:
                    self._fail(name, "; ".join(errors), count=len(errors), up=good > 0)
                else:
                    self._recovered(name)
            for device_id in self._seen - read_now:
                self.accounting.lost(device_id)
            self._seen = read_now
            if self._orphans:
                self.accounting.unmeasured((i for ids in self._orphans.values() for i in ids),
                                           self.clock(), time.time())
            if self.embodied is not None:
                self.embodied.advance(time.monotonic())
            if self.attributor is not None:
                self.attributor.account(deltas, intensity, self.accounting.pue)
            self.latest = self._publish(intensity)
        self.heartbeat = time.monotonic()
        return self.latest

    def _fail(self, name: str, message: str, *, count: int, up: bool = False) -> None:
        self._errors[name] += count
        self._statuses = None
        if message != self._last_error[name]:  # log changes, not every interval
            log.warning("probe %s: %s", name, message)
        self._last_error[name] = message
        self._up[name] = up
        if not up:  # nothing read: skip 0, 1, 3, 7 ... samples before the next try
            self._failures[name] += 1
            self._skip[name] = min(2 ** min(self._failures[name] - 1, 16) - 1,
                                   int(BACKOFF_MAX_S / self.interval))

    def _recovered(self, name: str) -> None:
        if not self._up[name] or self._last_error[name]:
            log.info("probe %s: recovered", name)
            self._statuses = None
        self._up[name] = True
        self._last_error[name] = ""
        self._failures[name] = 0

    def _publish(self, intensity: Intensity) -> Snapshot:
        totals = self.accounting.totals()
        self._seq += 1
        energy, power, emissions = host_totals(totals, metered=self.metered)
        return Snapshot(
            seq=self._seq,
            taken_unix=time.time(),
            taken_monotonic=time.monotonic(),
            devices=totals,
            host_energy_j=energy,
            host_power_w=power,
            host_emissions_g=emissions,
            intensity=intensity,
            pue=self.accounting.pue,
            probes=self._probe_statuses(),
            providers=self.providers() if self.providers is not None else (),
            embodied=self.embodied.totals() if self.embodied is not None else (),
            attribution=self.attributor.view() if self.attributor is not None else None,
            metered=self.metered,
            host_estimated_energy_j=host_estimated(totals, metered=self.metered),
        )

    def _probe_statuses(self) -> tuple[ProbeStatus, ...]:
        """Made again only after a failure or a recovery: most samples share the last."""
        if self._statuses is None:
            self._statuses = (
                *(ProbeStatus(p.name, self._up[p.name], self._errors[p.name],
                              self._last_error[p.name]) for p in self.probes),
                *(ProbeStatus(name, False, 0, self.unavailable[name]) for name in self._orphans))
        return self._statuses

    def run(self, *, first_now: bool = True) -> None:
        """Sample every `interval` seconds until close(); late samples are not bunched.
        `first_now=False` waits one interval first (the caller has just sampled)."""
        deadline = time.monotonic() + (0.0 if first_now else self.interval)
        failed = ""
        stop = self._stop
        while not stop.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                self.sample()
                failed = ""
            except Exception as e:  # a bug must cost a sample, never the loop (/healthz
                if repr(e) != failed:  # turns 503 while it lasts: no sample finishes)
                    log.exception("sampler: a sample failed")
                failed = repr(e)
            self.ticks.poke()  # never raises: each step logs its own failures
            deadline += self.interval
            now = time.monotonic()
            if deadline < now:  # fell behind (a stopped process): skip, don't catch up
                deadline = now + self.interval

    def start(self, *, first_now: bool = True) -> None:
        self._thread = threading.Thread(target=self.run, kwargs={"first_now": first_now},
                                        name="sampler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """End the loop after the sample in progress, and close every probe."""
        if self._stop.locked():
            self._stop.release()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for g in self._guards:
            g.close(timeout=max(self.probe_timeout, 1.0))
        if self.attributor is not None:
            self.attributor.close()

    def alive(self) -> bool:
        """False when no sample finished for three intervals (a dead or stalled loop; a
        hung probe cannot stall it)."""
        running = self._thread is not None and self._thread.is_alive()
        return running and time.monotonic() - self.heartbeat < max(3 * self.interval,
                                                                    self.interval + 5)

