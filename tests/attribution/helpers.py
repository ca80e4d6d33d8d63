"""Running an attributor over fixture trees, interval by interval, as the sampler does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from carbonmeter import config
from carbonmeter.accounting import EnergyDelta
from carbonmeter.attribution import build
from carbonmeter.attribution.attributor import Attributor
from carbonmeter.attribution.view import AttributionView
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.probes.base import Device
from tests.fixtures.node import FakeNode

CPU = Device("package-0", "cpu", "rapl", wrap_uj=262143328850)
DRAM = Device("dram-0", "dram", "rapl", wrap_uj=65712999613)
GPU = Device("gpu-0", "gpu", "nvml")
INTENSITY = Intensity(100.0, "test", "config", "test")


SCRAPE = "scrape"  # the one reader of the workload rows in these tests: a scraper


def attributor(node: FakeNode, level: str, *, env: Mapping[str, str] | None = None,
               nvml: Any = None, baseline: bool = True, readers: tuple[str, ...] = (SCRAPE,),
               **settings: Any) -> Attributor:
    """An attributor as `serve` builds it, its rows exported by `readers`; with `baseline`,
    after its first read of usage."""
    overrides = {"paths.procfs": str(node.procfs), "paths.sysfs": str(node.sysfs),
                 "attribution.level": level}
    overrides.update({f"attribution.{k}": v for k, v in settings.items()})
    a = build(config.load(env={}, overrides=overrides), [], env=env or {}, nvml=nvml)
    assert a is not None
    for reader in readers:
        a.add_reader(reader)
    if baseline:
        a.account([], INTENSITY, 1.0)
    return a


def step(a: Attributor, node: FakeNode, *, seconds: float = 1.0,
         energy: Mapping[Device, float] | None = None) -> AttributionView:
    """The node's changes are written, time passes, and one interval is shared."""
    node.elapse(seconds)
    node.flush()
    deltas = [EnergyDelta(d, j, seconds) for d, j in (energy or {CPU: 100.0}).items()]
    a.account(deltas, INTENSITY, 1.0)
    return a.view()


def table(view: AttributionView, kind: str = "cpu") -> dict[tuple[str, ...], float]:
    """(workload, *labels) -> energy of one kind."""
    return {(r.workload, *r.labels): r.energy_j for r in view.rows if r.kind == kind}
