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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from carbonmeter import snapshot
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.config import Config
from carbonmeter.probes.base import Device
from carbonmeter.snapshot import Snapshot

if TYPE_CHECKING:
    from carbonmeter.attribution import Attributor, TreeShare

FINE_INTERVAL_S = 1.0  # how often power sources are read during a span, unless told
WRAP_GUARD_S = 60.0  # a 65 kJ RAPL DRAM range lasts 60 s only above 1 kW


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """What one device spent during a span: the device as the sampler knew it, and the
    difference of its totals."""

    device: Device
    energy_j: float
    emissions_g: float

    @property
    def id(self) -> str:
        return self.device.id

    @property
    def kind(self) -> str:
        return self.device.kind

    @property
    def source(self) -> str:
        return self.device.source

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def estimated(self) -> bool:
        return self.device.estimated


@dataclass(frozen=True)
class Usage:
    """What one span cost: the result of `carbonmeter run`, `track()` and each task."""

    name: str  # the task's name; "" for a whole run or tracker
    started_unix: float
    duration_s: float
    devices: tuple[DeviceUsage, ...]
    intensity: Intensity  # the intensity at the end of the span
    pue: float
    tasks: tuple[Usage, ...] = ()
    error: str = ""  # the exception that ended the span, if one did
    scope: str = "machine"  # "process tree" when `share` holds the command's part
    share: TreeShare | None = None  # the process tree's part of `energy_j`, when attributed
    scope_reason: str = ""  # why the whole machine is reported, when it is
    metered: bool = False  # a whole-host meter ran: the host rule (snapshot.counted)

    @property
    def counted(self) -> list[DeviceUsage]:
        """The devices that make the total, by the exporter's host rule."""
        return snapshot.counted(self.devices, metered=self.metered)

    @property
    def energy_j(self) -> float:
        return sum((d.energy_j for d in self.counted), 0.0)

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / 3.6e6

    @property
    def emissions_g(self) -> float:
        return sum((d.emissions_g for d in self.counted), 0.0)

    @property
    def emissions_kg(self) -> float:
        return self.emissions_g / 1000

    @property
    def region(self) -> str:
        return self.intensity.region

    def energy_by_kind(self) -> dict[str, float]:
        """Joules per device kind (cpu, dram, gpu, ram, platform), in first-seen order."""
        out: dict[str, float] = {}
        for d in self.devices:
            out[d.kind] = out.get(d.kind, 0.0) + d.energy_j
        return out

    @property
    def measured_j(self) -> float:
        return sum((d.energy_j for d in self.counted if not d.estimated), 0.0)

    @property
    def estimated_j(self) -> float:
        return sum((d.energy_j for d in self.counted if d.estimated), 0.0)


def usage_between(a: Snapshot, b: Snapshot, *, name: str = "", tasks: tuple[Usage, ...] = (),
                  error: str = "") -> Usage:
    """The energy and emissions counted from snapshot `a` to the later snapshot `b`."""
    before = {d.device.id: d for d in a.devices}
    devices = []
    for d in b.devices:
        prev = before.get(d.device.id)
        e0, g0 = (prev.energy_j, prev.emissions_g) if prev is not None else (0.0, 0.0)
        devices.append(DeviceUsage(d.device, d.energy_j - e0, d.emissions_g - g0))
    return Usage(name=name, started_unix=a.taken_unix,
                 duration_s=max(0.0, b.taken_monotonic - a.taken_monotonic),
                 devices=tuple(devices), intensity=b.intensity, pue=b.pue, tasks=tasks,
                 error=error, metered=b.metered, **_tree_between(a, b))


def _tree_between(a: Snapshot, b: Snapshot) -> dict[str, object]:
    """The process tree's part of the span, when a process-tree attributor shares the
    machine's energy (`Meter.attach`): the difference of its cumulative shares."""
    if b.attribution is None or b.attribution.scope != "tree":
        return {}
    from carbonmeter.attribution import TreeShare, process_tree_share

    end = process_tree_share(b)
    if end is None:
        return {}
    begin = process_tree_share(a) if a.attribution is not None else None
    if begin is None:
        return {"scope": "process tree", "share": end}
    kinds = {k: j - begin.by_kind.get(k, 0.0) for k, j in end.by_kind.items()}
    share = TreeShare(end.energy_j - begin.energy_j, end.emissions_g - begin.emissions_g,
                      kinds, end.method)
    return {"scope": "process tree", "share": share}


class Meter:
    """Probes, sampler and, only where a source needs it, a thread that reads them."""

    def __init__(self, cfg: Config, *, interval: float | None = None) -> None:
        from carbonmeter.carbon.resolve import resolve
        from carbonmeter.discovery import discover
        from carbonmeter.sampler import Sampler

        intensity = resolve(cfg.carbon)
        probes, self.reports = discover(cfg)
        self.interval = interval  # power sources: seconds between reads (FINE_INTERVAL_S)
        # Probes are read in line: a measured block gets no thread it does not need.
        self.sampler = Sampler(probes, intensity, pue=cfg.carbon.pue,
                               interval=interval or FINE_INTERVAL_S, probe_timeout=None)
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
        """The last reading, then the thread and the probes are closed."""
        last = self.sampler.sample()
        self.sampler.stop()
        return last
