"""Measuring a span of time — a command, a block of code, a task — on the exporter's own parts.

A `Meter` runs the same probes, sampler and accounting as `carbonmeter serve`; a span's
figures are the difference of two snapshots, so they are exactly what the exporter would
count over the same time. How often it reads depends on the sources, not on the span:

- power sources (estimates, GPUs without an energy counter) are integrated, so they are
  read every `interval` seconds by the sampler's thread;
- counters are exact whatever the interval, so they are read only when a span starts or
  ends — except a counter that wraps (RAPL, 262 kJ: 15 minutes at 300 W), which must be
  read at least once per wrap or the wrap is lost: the thread then reads once a minute;
- with only counters that never wrap (NVML energy) no thread is started at all.

The probes are discovered once per process (`carbonmeter.discovery.shared`); each meter reads
readers of its own (`Probe.reader()`), so a measurement's baseline is its own and only the
first in a process pays for discovery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from carbonmeter import discovery
from carbonmeter.carbon.resolve import resolve
from carbonmeter.config import Config
from carbonmeter.sampler import Sampler
from carbonmeter.snapshot import Snapshot

if TYPE_CHECKING:
    from carbonmeter.attribution import Attributor

FINE_INTERVAL_S = 1.0  # how often power sources are read during a span, unless told
WRAP_GUARD_S = 60.0  # a 65 kJ RAPL DRAM range lasts 60 s only above 1 kW


class Meter:
    """Probes, sampler and, only where a source needs it, a thread that reads them."""

    def __init__(self, cfg: Config, *, interval: float | None = None) -> None:
        intensity = resolve(cfg.carbon)
        self._shared: discovery.Shared | None = discovery.shared(cfg)
        self.reports = self._shared.reports
        self.interval = interval  # power sources: seconds between reads (FINE_INTERVAL_S)
        # Probes are read in line: a measured block gets no thread it does not need.
        self.sampler = Sampler([p.reader() for p in self._shared.probes], intensity,
                               pue=cfg.carbon.pue, interval=interval or FINE_INTERVAL_S,
                               probe_timeout=None)
        self.threaded = False

    def start(self) -> Snapshot:
        """First reading of every device; starts the reading thread if a source needs one."""
        first = self.sampler.sample()
        if not self.sampler.accounting.integrates_power():
            if not any(d.wrap_uj is not None for p in self.sampler.probes for d in p.devices):
                return first
            self.sampler.interval = min(self.interval or WRAP_GUARD_S, WRAP_GUARD_S)
        self.threaded = True
        self.sampler.start(first_now=False)
        return first

    def read(self) -> Snapshot:
        return self.sampler.sample()

    def attach(self, attributor: Attributor) -> None:
        """Share every later interval with `attributor`, starting from now (a command that
        has just been started): between two samples, so no interval is split."""
        with self.sampler._sample_lock:
            self.sampler.attributor = attributor
            attributor.start()

    def stop(self) -> Snapshot:
        """The last reading, then the thread and the readers are closed; a probe that failed
        during the span is discovered again by the next measurement."""
        last = self.sampler.sample()
        self.sampler.close()
        if self._shared is not None:
            discovery.release(self._shared, failed=any(p.errors_total for p in last.probes))
            self._shared = None
        return last
