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

from carbonmeter.accounting import EnergyDelta
from carbonmeter.attribution.ledger import Ledger
from carbonmeter.attribution.model import (
    HOST_KEY,
    MEMORY_KINDS,
    OTHER_KEY,
    UNATTRIBUTED_KEY,
    IdlePower,
    Key,
    idle_shares,
    memory_idle_j,
    split,
)
from carbonmeter.attribution.sources import Interval
from carbonmeter.attribution.view import LEVEL_LABELS, AttributionView, Identity, IdleRow
from carbonmeter.carbon.intensity import Intensity, grams

log = logging.getLogger(__name__)

# Device scopes (probes.base where whole-host meters exist); a device without one is a part.
PART, METER, BESIDE = "part", "host", "beside"


def _scope(d: EnergyDelta) -> str:
    return getattr(d.device, "scope", PART)


def host_deltas(deltas: Iterable[EnergyDelta]) -> list[EnergyDelta]:
    """The interval's energy as the host total counts it, to be shared without overlap.

    Without a whole-host meter the devices never overlap: all of them. With one (the BMC over
    IPMI or Redfish, an ACPI power meter) the meter is the host and the parts are inside it:
    the parts by their kinds, plus the meter's remainder (fans, disks, power supply losses)
    under the meter's kind; a meter reading less than its parts scales them down to it.
    Devices beside the host (a declared switch) count as they are.
    """
    deltas = list(deltas)
    meters = [d for d in deltas if _scope(d) == METER]
    if not meters:
        return deltas
    parts = [d for d in deltas if _scope(d) == PART]
    out = [d for d in deltas if _scope(d) == BESIDE]
    metered, inside = math.fsum(d.energy_j for d in meters), math.fsum(d.energy_j for d in parts)
    if metered >= inside:
        rest = (metered - inside) / metered if metered > 0 else 0.0
        out += parts
        out += [EnergyDelta(m.device, m.energy_j * rest, m.seconds) for m in meters]
    else:
        out += [EnergyDelta(d.device, d.energy_j * metered / inside, d.seconds) for d in parts]
    return out


class Attributor:
    def __init__(self, source: Any, *, scope: str, policy: str, idle: IdlePower,
                 ledger: Ledger, own: Callable[[Key], bool] | None = None,
                 nvml: Any = None) -> None:
        self.first_error = ""  # the first failed read of usage, if any
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
        self._present: dict[Key, Identity] | None = None  # None until usage is first read
        self._error = ""
        self._started = False

    def start(self) -> None:
        """Read usage now as the starting point, before the sampler's next interval (a process
        tree whose root has just been started); does nothing once usage has been read."""
        if not self._started:
            self._read()

    def _read(self) -> Interval | None:
        self._started = True
        try:
            interval = self.source.sample()
        except Exception as e:
            self._report(f"{type(e).__name__}: {e}")
            return None
        self._report("")
        return interval

    def account(self, deltas: Iterable[EnergyDelta], intensity: Intensity, pue: float) -> None:
        """Share one interval's device energies; never raises (a failure is logged and the
        interval's energy is unattributed)."""
        started = time.perf_counter()
        interval = self._read()
        energy: dict[str, dict[Key, float]] = {}  # kind -> workload -> J this interval
        power: dict[str, dict[Key, float]] = {}  # kind -> workload -> W
        shares = idle_shares(self.policy, interval.usage) if interval else {}
        own = self.own
        for d in host_deltas(deltas):
            if d.seconds <= 0:
                continue
            kind = d.device.kind
            self._kinds[d.device.id] = kind
            idle_w = self.idle.watts(d.device.id, kind, d.energy_j / d.seconds)
            if interval is None or _scope(d) == BESIDE:  # a switch: no workload's doing
                parts = {UNATTRIBUTED_KEY: d.energy_j}
            else:
                parts = self._split(d, kind, idle_w * d.seconds, interval, shares)
            ek = energy.setdefault(kind, {})
            pk = power.setdefault(kind, {})
            per_s = 1.0 / d.seconds
            for key, joules in parts.items():
                if own is not None and key is not UNATTRIBUTED_KEY and not own(key):
                    key = OTHER_KEY
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
            from carbonmeter.attribution.gpu import GpuProcesses

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
            key = interval.key_of_pid(pid) or HOST_KEY
            out[key] = out.get(key, 0.0) + w
        return out

    def _report(self, error: str) -> None:
        if error and not self.first_error:
            self.first_error = error  # a span (carbonmeter run) with a gap is not the tree's
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

    def add_reader(self, reader: str) -> None:
        """A sink that exports the workload rows under `reader` (see Ledger.register)."""
        self.ledger.register(reader)

    def export(self) -> dict[str, Any]:
        """The ledger for the state file, with the level and scope it was kept at."""
        return {"level": self.level, "scope": self.scope, **self.ledger.export()}

    def restore(self, saved: dict[str, Any], *, same_boot: bool) -> None:
        """Continue the ledger of a checkpoint; its workloads' series only where they were
        kept at this level and scope (otherwise they count as series no longer shown)."""
        same = saved["level"] == self.level and saved["scope"] == self.scope
        if not same:
            log.info("attribution: the state file's workloads were kept per %s (scope %s), "
                     "not per %s (scope %s): their series end; host, other and unattributed "
                     "continue", saved["level"], saved["scope"], self.level, self.scope)
        self.ledger.restore(saved, workloads=same, same_boot=same_boot)

    def close(self) -> None:
        for part in (self.source, self._gpu):
            if part is not None:
                try:
                    part.close()
                except Exception as e:
                    log.debug("attribution: closing: %s", e)
