"""What a span of time cost — a command, a block of code, a task: the difference of two
snapshots, device by device, with the host rule applied as the exporter applies it.

A data type beside the snapshot: `carbonmeter run`, the Python API, the emissions log and the
reports read it; it imports nothing that reads hardware or files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from carbonmeter import snapshot
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import Device, relative_error
from carbonmeter.snapshot import Snapshot

if TYPE_CHECKING:
    from carbonmeter.attribution.view import TreeShare


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

    def relative_error(self, duration_s: float) -> float | None:
        """The expected relative error of an estimated device's energy over a span of
        `duration_s`, at the mean power it was spent at; None for a measured device."""
        return relative_error(self.device,
                              self.energy_j / duration_s if duration_s > 0 else None)


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

    # What `carbonmeter run` puts first, in its summary and its log row: the command's
    # process tree where it was attributed (what a user of `time` expects), else the machine.

    @property
    def own_energy_j(self) -> float:
        return self.share.energy_j if self.share is not None else self.energy_j

    @property
    def own_emissions_g(self) -> float:
        return self.share.emissions_g if self.share is not None else self.emissions_g

    def own_energy_by_kind(self) -> dict[str, float]:
        return dict(self.share.by_kind) if self.share is not None else self.energy_by_kind()

    @property
    def measured_j(self) -> float:
        return sum((d.energy_j for d in self.counted if not d.estimated), 0.0)

    @property
    def estimated_j(self) -> float:
        return sum((d.energy_j for d in self.counted if d.estimated), 0.0)

    @property
    def estimated_relative_error(self) -> float | None:
        """The expected relative error of the estimated energy counted in the total: each
        device's error bar weighted by its energy, added rather than in quadrature (the parts
        of one estimate err together). None when nothing counted was estimated."""
        pairs = [(e, d.energy_j) for d in self.counted
                 if (e := d.relative_error(self.duration_s)) is not None]
        total = sum(j for _, j in pairs)
        return sum(e * j for e, j in pairs) / total if total > 0 else None

    @property
    def energy_relative_error(self) -> float:
        """The expected relative error of `energy_j`: measured energy has none."""
        e = self.estimated_relative_error
        return 0.0 if e is None or self.energy_j <= 0 else e * self.estimated_j / self.energy_j


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
    machine's energy (`Meter.attach`): the difference of its cumulative shares. Without one
    (track()), the attribution package (about 40 ms of imports) is not loaded."""
    if b.attribution is None:
        return {}
    from carbonmeter.attribution.view import TreeShare, tree_share

    end = tree_share(b.attribution)
    if end is None:
        return {}
    begin = tree_share(a.attribution)
    if begin is None:
        return {"scope": "process tree", "share": end}
    kinds = {k: j - begin.by_kind.get(k, 0.0) for k, j in end.by_kind.items()}
    share = TreeShare(end.energy_j - begin.energy_j, end.emissions_g - begin.emissions_g,
                      kinds, end.method)
    return {"scope": "process tree", "share": share}
