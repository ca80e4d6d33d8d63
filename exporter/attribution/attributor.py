"""Each interval: read what workloads used, share every device's energy, keep the totals.

The sampler calls `account()` after each sample with the energy each device spent since the
previous one; the attributor reads usage at the same moment, so both cover the same interval.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from exporter.accounting import EnergyDelta
from exporter.attribution.ledger import Ledger
from exporter.attribution.model import (
    HOST,
    MEMORY_KINDS,
    OTHER,
    UNATTRIBUTED,
    IdlePower,
    Key,
    idle_shares,
    memory_idle_j,
    split,
)
from exporter.attribution.sources import Interval
from exporter.attribution.view import LEVEL_LABELS, AttributionView, Identity, IdleRow
from exporter.carbon import Intensity, grams

log = logging.getLogger(__name__)


class Attributor:
    def __init__(self, source: Any, *, scope: str, policy: str, idle: IdlePower,
                 ledger: Ledger, own: Callable[[Key], bool] | None = None,
                 nvml: Any = None) -> None:
        self.source = source
        self.level: str = source.level
        self.scope = scope
        self.policy = policy
        self.idle = idle
        self.ledger = ledger
        self.own = own  # scope self/tree: the watched workloads; the rest is `other`
        self.label_names = LEVEL_LABELS[self.level]
        self.seconds: float | None = None
        self._nvml = nvml
        self._gpu: Any = None
        self._gpu_failed = False
        self._kinds: dict[str, str] = {}
        self._present: dict[Key, Identity] = {}
        self._error = ""

    def account(self, deltas: Iterable[EnergyDelta], intensity: Intensity, pue: float) -> None:
        """Share one interval's device energies; never raises (a failure is logged and the
        interval's energy is unattributed)."""
        started = time.perf_counter()
        interval: Interval | None = None
        try:
            interval = self.source.sample()
            self._report("")
        except Exception as e:
            self._report(f"{type(e).__name__}: {e}")
        energy: dict[str, dict[Key, float]] = {}  # kind -> workload -> J this interval
        power: dict[str, dict[Key, float]] = {}  # kind -> workload -> W
        shares = idle_shares(self.policy, interval.usage) if interval else {}
        own = self.own
        for d in deltas:
            if d.seconds <= 0:
                continue
            kind = d.device.kind
            self._kinds[d.device.id] = kind
            idle_w = self.idle.watts(d.device.id, kind, d.energy_j / d.seconds)
            if interval is None:
                parts = {UNATTRIBUTED: d.energy_j}
            else:
                parts = self._split(d, kind, idle_w * d.seconds, interval, shares)
            ek = energy.setdefault(kind, {})
            pk = power.setdefault(kind, {})
            per_s = 1.0 / d.seconds
            for key, joules in parts.items():
                if own is not None and key is not UNATTRIBUTED and not own(key):
                    key = OTHER
                ek[key] = ek.get(key, 0.0) + joules
                pk[key] = pk.get(key, 0.0) + joules * per_s
        if interval is not None:
            present = interval.present
            if self.own is not None:
                present = {k: v for k, v in present.items() if self.own(k)}
            self._present = present
        self.ledger.record(self._present, energy, power, grams(1.0, pue, intensity))
        self.seconds = time.perf_counter() - started

    def _split(self, d: EnergyDelta, kind: str, idle_j: float, interval: Interval,
               shares: dict[Key, float]) -> dict[Key, float]:
        u = interval.usage
        if kind in MEMORY_KINDS:
            idle_j, in_use = memory_idle_j(d.energy_j, u)
            return split(d.energy_j, idle_j, u.memory, in_use, shares)
        if kind == "gpu":
            weights = self._gpu_weights(d, interval)
            return split(d.energy_j, idle_j, weights, math.fsum(weights.values()), shares)
        total = max(u.node_cpu, math.fsum(u.cpu.values()))
        return split(d.energy_j, idle_j, u.cpu, total, shares)

    def _gpu_weights(self, d: EnergyDelta, interval: Interval) -> dict[Key, float]:
        """Workload -> weight on this GPU; processes in no workload weigh for the host."""
        if d.device.source != "nvml" or self._gpu_failed:
            return {}
        if self._gpu is None:
            from exporter.attribution.gpu import GpuProcesses

            try:
                self._gpu = GpuProcesses(self._nvml)
            except Exception as e:
                self._gpu_failed = True
                log.warning("attribution: cannot open NVML for per-process GPU use (%s); GPU "
                            "dynamic energy is unattributed", e)
                return {}
        try:
            index = int(d.device.id.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            return {}
        out: dict[Key, float] = {}
        for pid, w in self._gpu.weights(index).items():
            key = interval.key_of_pid(pid) or HOST
            out[key] = out.get(key, 0.0) + w
        return out

    def _report(self, error: str) -> None:
        if error != self._error:
            if error:
                log.warning("attribution: cannot read workload usage (%s); this interval's "
                            "energy is unattributed", error)
            else:
                log.info("attribution: reading workload usage again")
        self._error = error

    def view(self) -> AttributionView:
        led = self.ledger
        idle = tuple(IdleRow(dev, kind, self.idle.current(dev, kind),
                             self.idle.how(dev, kind))
                     for dev, kind in self._kinds.items() if kind not in MEMORY_KINDS)
        return AttributionView(self.level, self.scope, self.label_names,
                               led.rows(len(self.label_names)), idle, led.hidden(),
                               led.interval, self.seconds,
                               self.source.method, led.ack)

    def close(self) -> None:
        for part in (self.source, self._gpu):
            if part is not None:
                try:
                    part.close()
                except Exception as e:
                    log.debug("attribution: closing: %s", e)
