"""The one loop that touches hardware: read every probe, account, publish a snapshot.

Sinks never call probes; they read `latest`, which is swapped whole after each
sample. Intervals are timed on the monotonic clock, so a wall-clock jump neither
creates nor loses energy.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from exporter.accounting import Accounting, EnergyDelta
from exporter.carbon import IntensitySource
from exporter.snapshot import ProbeStatus, Snapshot
from probes.base import Probe

if TYPE_CHECKING:
    from exporter.attribution import Attributor

log = logging.getLogger(__name__)


class Sampler:
    def __init__(self, probes: list[Probe], intensity: IntensitySource, *, pue: float,
                 interval: float, attributor: Attributor | None = None) -> None:
        self.probes = probes
        self.attributor = attributor  # shares each interval's energy among workloads
        self.intensity = intensity
        self.interval = interval
        self.accounting = Accounting(pue)
        self._errors = {p.name: 0 for p in probes}
        self._last_error = {p.name: "" for p in probes}
        self._up = {p.name: True for p in probes}
        self._seen: set[str] = set()
        self._seq = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat = time.monotonic()  # when the loop last finished a sample
        self.latest: Snapshot = self._publish()

    def sample(self) -> Snapshot:
        """Read every probe once and publish the new totals."""
        intensity = self.intensity.current()
        read_now: set[str] = set()
        deltas: list[EnergyDelta] = []
        for probe in self.probes:
            try:
                result = probe.read()
            except Exception as e:  # a probe must never take the loop down
                self._fail(probe.name, f"{type(e).__name__}: {e}", count=1)
                continue
            t = time.monotonic()
            for reading in result.readings:
                delta = self.accounting.add(reading, t, intensity)
                if delta is not None:
                    deltas.append(delta)
                read_now.add(reading.device.id)
            if result.errors:
                self._fail(probe.name, "; ".join(result.errors), count=len(result.errors),
                           up=bool(result.readings))
            elif not self._up[probe.name] or self._last_error[probe.name]:
                log.info("probe %s: recovered", probe.name)
                self._up[probe.name] = True
                self._last_error[probe.name] = ""
        for device_id in self._seen - read_now:
            self.accounting.lost(device_id)
        self._seen = read_now
        if self.attributor is not None:
            self.attributor.account(deltas, intensity, self.accounting.pue)
        self.latest = self._publish()
        self.heartbeat = time.monotonic()
        return self.latest

    def _fail(self, name: str, message: str, *, count: int, up: bool = False) -> None:
        self._errors[name] += count
        if message != self._last_error[name]:  # log changes, not every interval
            log.warning("probe %s: %s", name, message)
        self._last_error[name] = message
        self._up[name] = up

    def _publish(self) -> Snapshot:
        totals = self.accounting.totals()
        self._seq += 1
        powers = [d.power_w for d in totals if d.power_w is not None]
        return Snapshot(
            seq=self._seq,
            taken_unix=time.time(),
            devices=totals,
            # Every device the probes export is disjoint from the others (RAPL drops
            # subzones and mirrors; psys replaces package + dram), so the host is the sum.
            host_energy_j=sum(d.energy_j for d in totals),
            host_power_w=sum(powers) if powers else None,
            host_emissions_g=sum(d.emissions_g for d in totals),
            intensity=self.intensity.current(),
            pue=self.accounting.pue,
            probes=tuple(ProbeStatus(p.name, self._up[p.name], self._errors[p.name],
                                     self._last_error[p.name]) for p in self.probes),
            attribution=self.attributor.view() if self.attributor is not None else None,
        )

    def run(self) -> None:
        """Sample every `interval` seconds until stop(); late samples are not bunched."""
        deadline = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            deadline += self.interval
            now = time.monotonic()
            if deadline < now:  # fell behind (suspend, a slow probe): skip, don't catch up
                deadline = now + self.interval
            self._stop.wait(deadline - now)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for probe in self.probes:
            try:
                probe.close()
            except Exception as e:
                log.debug("closing %s: %s", probe.name, e)
        if self.attributor is not None:
            self.attributor.close()

    def alive(self) -> bool:
        """False when no sample finished for three intervals (a hung probe, a dead thread)."""
        running = self._thread is not None and self._thread.is_alive()
        return running and time.monotonic() - self.heartbeat < max(3 * self.interval,
                                                                    self.interval + 5)
