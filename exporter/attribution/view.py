"""What the attribution publishes with each snapshot: immutable rows, like the rest of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

LEVEL_LABELS = {
    "pod": ("namespace", "pod"),
    "container": ("namespace", "pod", "container"),
    "process": ("pid", "comm"),
}


# OpenTelemetry resource attributes of the level labels (semantic conventions for k8s.*,
# container.* and process.*).
OTEL_NAMES = {"namespace": "k8s.namespace.name", "pod": "k8s.pod.name",
              "container": "k8s.container.name", "pid": "process.pid",
              "comm": "process.executable.name"}


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a workload is, as users see it."""

    workload: str  # "pod", "container", "service", "process"
    labels: tuple[str, ...] | None  # values of the level's labels; None until names are known
    attributes: tuple[tuple[str, str], ...] = ()  # OpenTelemetry ones the labels lack


@dataclass(frozen=True, slots=True)
class WorkloadRow:
    """One workload's totals on one kind of device (cpu, dram, gpu, ram, platform)."""

    workload: str  # pod, container, service, process; or host, other, unattributed
    labels: tuple[str, ...]  # values of AttributionView.label_names ("" for the special rows)
    kind: str
    energy_j: float  # cumulative since the row appeared
    emissions_g: float  # cumulative CO2eq, PUE applied, each interval at its intensity
    power_w: float | None  # over the last interval; None once the workload has ended
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class IdleRow:
    device: str
    kind: str
    watts: float
    how: str  # "configured", "model" or "lowest seen"


@dataclass(frozen=True, slots=True)
class AttributionView:
    level: str  # pod, container, process
    scope: str  # node, self, tree
    label_names: tuple[str, ...]
    rows: tuple[WorkloadRow, ...]
    idle: tuple[IdleRow, ...]
    # kind -> (J, g) held by series not shown: ended workloads' dropped after export, and
    # live ones out of the top N for now. With them the rows add up, kind by kind, to all the
    # energy of the host's devices since attribution started.
    hidden: dict[str, tuple[float, float]]
    interval: int  # the attribution's interval number
    seconds: float | None  # what reading usage and splitting cost in the last interval
    method: str  # how usage was read, in one line
    ack: Callable[[str, int], None] = field(default=lambda _r, _n: None, compare=False,
                                            repr=False)

    def exported(self, reader: str) -> None:
        """The sink `reader` has published these rows: ended workloads in them may be dropped
        once every reader has."""
        self.ack(reader, self.interval)

    def otel_attributes(self, row: WorkloadRow) -> dict[str, str]:
        """A row's OpenTelemetry attributes: its labels under the semantic conventions' names
        (empty ones left out), what the labels lack (k8s.pod.uid, container.id), and
        carbonmeter.workload and hw.type for the row's kind."""
        out = {OTEL_NAMES[n]: v for n, v in zip(self.label_names, row.labels, strict=True)
               if v}
        out.update((k, v) for k, v in row.attributes if v)
        out["carbonmeter.workload"] = row.workload
        out["hw.type"] = row.kind
        return out


@dataclass(frozen=True, slots=True)
class TreeShare:
    """The part of a span's energy a process tree spent (`carbonmeter run`)."""

    energy_j: float
    emissions_g: float
    by_kind: dict[str, float]  # joules per device kind
    method: str  # how it was measured, for the user


def tree_share(view: AttributionView | None) -> TreeShare | None:
    """The process tree's cumulative energy and CO2eq in a view of a `process_tree`
    attributor; None for any other view, or none."""
    if view is None or view.scope != "tree":
        return None
    rows = [r for r in view.rows if r.workload == "process"]
    by_kind: dict[str, float] = {}
    for r in rows:
        by_kind[r.kind] = by_kind.get(r.kind, 0.0) + r.energy_j
    return TreeShare(sum((r.energy_j for r in rows), 0.0),
                     sum((r.emissions_g for r in rows), 0.0), by_kind, view.method)
