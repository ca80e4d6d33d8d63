"""How one device's energy over one interval is shared among workloads.

Every device's interval energy E is cut in two:

- its idle part, min(E, P_idle x dt) for CPUs, GPUs and platform zones (P_idle from
  `IdlePower`), and for memory the share of installed memory that is free;
- its dynamic part, the rest: shared by what each workload used of that device over the
  interval (CPU time for CPUs and platform zones, memory for DRAM and RAM, NVML utilisation
  for GPUs). Use that no workload explains (interrupts, processes that lived and died between
  samples, the kernel's own memory) goes to the `host` row.

The idle part follows the idle policy: shared equally among the workloads present, in
proportion to the CPUs each requested out of the node's CPUs (what no one requested stays
unattributed), or left unattributed. Whatever has no owner is unattributed, computed as E minus
everything given out, so the rows always add up to E.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

Key = tuple  # a workload's identity: ("pod", uid), ("process", pid, start), ...
HOST_KEY: Key = ("host",)
OTHER_KEY: Key = ("other",)
UNATTRIBUTED_KEY: Key = ("unattributed",)
MEMORY_KINDS = frozenset({"dram", "ram"})


@dataclass(slots=True)
class WorkloadUsage:
    """What workloads used over one interval: the model's input, in any consistent units."""

    cpu: dict[Key, float] = field(default_factory=dict)  # CPU seconds per workload
    node_cpu: float = 0.0  # the node's busy CPU seconds (whatever ran, interrupts included)
    memory: dict[Key, float] = field(default_factory=dict)  # bytes per workload
    mem_total: float = 0.0  # installed memory (MemTotal)
    mem_free: float = 0.0  # MemFree
    requests: dict[Key, float] = field(default_factory=dict)  # CPUs requested
    ncpu: int = 1
    members: list[Key] = field(default_factory=list)  # the level's workloads present


def split(energy_j: float, idle_j: float, weights: Mapping[Key, float], total: float,
          idle_shares: Mapping[Key, float]) -> dict[Key, float]:
    """Energy per key for one device over one interval.

    `weights` is each workload's use of the device out of `total` (>= their sum; the rest is
    the host's); `idle_shares` gives each workload its fraction (summing to at most 1) of the
    idle part. Keys are workloads, HOST_KEY and UNATTRIBUTED_KEY; the values add up to `energy_j`.
    """
    out: dict[Key, float] = {}
    if energy_j <= 0:
        return {UNATTRIBUTED_KEY: energy_j} if energy_j else {}
    idle = min(energy_j, max(0.0, idle_j))
    dynamic = energy_j - idle
    if dynamic > 0 and total > 0:
        scale = dynamic / total
        given = 0.0
        for k, w in weights.items():
            if w > 0:
                out[k] = w * scale
                given += w
        if total > given:
            out[HOST_KEY] = out.get(HOST_KEY, 0.0) + (total - given) * scale
    if idle > 0:
        for k, s in idle_shares.items():
            if s > 0:
                out[k] = out.get(k, 0.0) + idle * s
    rest = energy_j - math.fsum(out.values())
    if rest < 0:  # rounding: take it from the largest part, so no counter ever goes back
        top = max(out, key=out.__getitem__)
        out[top] += rest
        rest = 0.0
    out[UNATTRIBUTED_KEY] = rest
    return out


def memory_idle_j(energy_j: float, usage: WorkloadUsage) -> tuple[float, float]:
    """(idle part, memory in use) for DRAM/RAM: the idle part is the free memory's share."""
    if usage.mem_total <= 0:
        return energy_j, 0.0
    in_use = max(usage.mem_total - usage.mem_free, math.fsum(usage.memory.values()))
    return energy_j * max(0.0, 1.0 - in_use / usage.mem_total), in_use


def idle_shares(policy: str, usage: WorkloadUsage) -> dict[Key, float]:
    """Each workload's fraction of the idle power under `policy`."""
    if policy == "equal" and usage.members:
        share = 1.0 / len(usage.members)
        return dict.fromkeys(usage.members, share)
    if policy == "requests" and usage.requests:
        shares = {k: r / usage.ncpu for k, r in usage.requests.items() if r > 0}
        total = math.fsum(shares.values())
        if total > 1:  # more requested than the node has (not Kubernetes): normalise
            shares = {k: s / total for k, s in shares.items()}
        return shares
    return {}


class IdlePower:
    """Idle power per device: configured per kind, known from a model, else the lowest mean
    interval power seen since start (which can only fall, so shares settle as the machine is
    seen at rest; on a machine never at rest it overstates idle)."""

    def __init__(self, configured: Mapping[str, float], known: Mapping[str, float]) -> None:
        self.configured = dict(configured)  # kind -> W per device of that kind
        self.known = dict(known)  # device id -> W
        self.seen: dict[str, float] = {}  # device id -> lowest mean power seen

    def watts(self, device_id: str, kind: str, power_w: float) -> float:
        """The idle power to use for an interval whose mean power was `power_w`."""
        low = self.seen.get(device_id)
        if low is None or power_w < low:
            self.seen[device_id] = power_w
        return self.current(device_id, kind)

    def current(self, device_id: str, kind: str) -> float:
        if kind in self.configured:
            return self.configured[kind]
        return self.known.get(device_id, self.seen.get(device_id, 0.0))

    def how(self, device_id: str, kind: str) -> str:
        if kind in self.configured:
            return "configured"
        return "model" if device_id in self.known else "lowest seen"
