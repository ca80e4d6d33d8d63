"""Which probes run on this machine, and why the others do not.

Measured sources come first; an estimate runs only for a kind of device that no
measured source covers, so a CPU is never counted by both RAPL and the load model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from exporter.config import Config
from probes.base import Paths, Probe, ProbeUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeReport:
    name: str
    available: bool
    reason: str = ""  # why not, or a note on how it measures
    devices: tuple[str, ...] = field(default_factory=tuple)


def _tdp_table() -> dict[str, float]:
    from importlib import resources

    from probes.cpu_names import parse_tdp_table

    return parse_tdp_table(
        resources.files("exporter.bundled").joinpath("cpu_tdp.csv").read_text("utf-8"))


def _make(name: str, cfg: Config, paths: Paths) -> Probe:
    if name == "rapl":
        from probes.rapl import RaplProbe

        return RaplProbe(paths, psys=cfg.rapl.psys)
    if name == "nvml":
        from probes.nvml import NvmlProbe

        return NvmlProbe(devices=cfg.gpu.devices or None)
    if name == "cpu_model":
        from probes.cpu_model import CpuModelProbe

        return CpuModelProbe(paths, tdp_watts=cfg.cpu.tdp_watts,
                             tdp_table=None if cfg.cpu.tdp_watts else _tdp_table())
    if name == "ram_model":
        from probes.ram_model import RamModelProbe

        return RamModelProbe(paths, watts_per_gb=cfg.ram.watts_per_gb)
    raise ValueError(name)


def _describe(probe: Probe) -> str:
    notes = []
    if getattr(probe, "tdp_note", ""):
        notes.append(f"TDP {probe.tdp_watts:g} W ({probe.tdp_note})")
    modes = getattr(probe, "modes", None)
    if modes:
        notes.extend(f"{d}: {m}" for d, m in modes.items())
    skipped = getattr(probe, "skipped", None)
    if skipped:
        notes.extend(f"skipped {d}: {why}" for d, why in dict(skipped).items())
    return "; ".join(notes)


def discover(cfg: Config) -> tuple[list[Probe], list[ProbeReport]]:
    """Start every probe that can run; report each one, running or not."""
    paths = Paths(sysfs=Path(cfg.paths.sysfs), procfs=Path(cfg.paths.procfs))
    probes: list[Probe] = []
    reports: list[ProbeReport] = []
    covered: set[str] = set()
    for name in ("rapl", "nvml", "cpu_model", "ram_model"):
        if name in cfg.probes.disabled:
            reports.append(ProbeReport(name, False, "disabled in probes.disabled"))
            continue
        if name == "cpu_model" and "cpu" in covered:
            reports.append(ProbeReport(name, False, "not needed: the CPU is measured by "
                                       + ", ".join(p.name for p in probes if "cpu" in p.covers)))
            continue
        if name == "ram_model" and "dram" in covered:
            reports.append(ProbeReport(name, False, "not needed: memory is measured by "
                                       + ", ".join(p.name for p in probes if "dram" in p.covers)))
            continue
        try:
            probe = _make(name, cfg, paths)
        except ProbeUnavailable as e:
            reports.append(ProbeReport(name, False, str(e)))
            continue
        probes.append(probe)
        covered |= probe.covers
        devices = tuple(f"{d.id} ({d.kind}, {'estimated' if d.estimated else 'measured'})"
                        for d in probe.devices)
        reports.append(ProbeReport(name, True, _describe(probe), devices))
    return probes, reports
