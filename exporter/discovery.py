"""Which probes run on this machine, and why the others do not.

Probes are tried in the order of `PROBE_NAMES`: component sensors first (RAPL, then the
amd_energy driver and hwmon for what RAPL does not cover, then GPUs and the macOS/Windows
tools), then whole-host meters (Redfish when configured, else IPMI), then declared devices,
and the estimates last. A later source stands down for what an earlier one already measures,
so a CPU is never counted by both RAPL and the load model, and the host by two meters.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

from carbonmeter.config import PROBE_NAMES, Config
from carbonmeter.probes.base import BESIDE, HOST, Device, Paths, Probe, ProbeUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeReport:
    name: str
    available: bool
    reason: str = ""  # why not, or the notes on how it measures, in one line
    devices: tuple[str, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)  # how it measures, one per line


@functools.cache  # read once per process: `track()` may discover probes many times
def _tdp_table() -> dict[str, float]:
    from importlib import resources

    from carbonmeter.probes.cpu_names import parse_tdp_table

    return parse_tdp_table(
        resources.files("carbonmeter.bundled").joinpath("cpu_tdp.csv").read_text("utf-8"))


def _make(name: str, cfg: Config, paths: Paths, measured: dict[str, str]) -> Probe:
    interval = cfg.sampler.interval_seconds
    if name == "rapl":
        from carbonmeter.probes.rapl import RaplProbe

        return RaplProbe(paths, psys=cfg.rapl.psys)
    if name == "amd_energy":
        from carbonmeter.probes.amd_energy import AmdEnergyProbe

        return AmdEnergyProbe(paths)
    if name == "hwmon":
        from carbonmeter.probes.hwmon import HwmonProbe

        h = cfg.hwmon
        return HwmonProbe(paths, interval=interval, include=h.include, exclude=h.exclude,
                          kinds=h.kinds, measured=measured)
    if name == "powermetrics":
        from carbonmeter.probes.powermetrics import PowermetricsProbe

        pm = cfg.powermetrics
        return PowermetricsProbe(command=pm.command,
                                 interval_ms=pm.interval_ms or interval * 1000)
    if name == "powergadget":
        from carbonmeter.probes.powergadget import PowerGadgetProbe

        pg = cfg.powergadget
        return PowerGadgetProbe(command=pg.command, log_file=pg.log,
                                resolution_ms=pg.resolution_ms, interval=interval)
    if name == "ipmi":
        from carbonmeter.probes.ipmi import IpmiProbe

        return IpmiProbe(command=cfg.ipmi.command, args=cfg.ipmi.args,
                         timeout=cfg.ipmi.timeout_seconds)
    if name == "redfish":
        from carbonmeter.probes.redfish import RedfishProbe, load_password

        r = cfg.redfish
        if not r.url:
            raise ProbeUnavailable("no redfish.url configured")
        return RedfishProbe(r.url, username=r.username,
                            password=load_password(r.password_env, r.password_file),
                            auth=r.auth, verify_tls=r.verify_tls, ca_file=r.ca_file,
                            timeout=r.timeout_seconds, chassis=r.chassis)
    if name == "declared":
        from carbonmeter.probes.declared import DeclaredProbe

        return DeclaredProbe(cfg.declared)
    if name == "nvml":
        from carbonmeter.probes.nvml import NvmlProbe

        return NvmlProbe(devices=cfg.gpu.devices or None)
    if name == "cpu_model":
        from carbonmeter.probes.cpu_model import CpuModelProbe

        return CpuModelProbe(paths, tdp_watts=cfg.cpu.tdp_watts,
                             tdp_table=None if cfg.cpu.tdp_watts else _tdp_table())
    if name == "ram_model":
        from carbonmeter.probes.ram_model import RamModelProbe

        return RamModelProbe(paths, watts_per_gb=cfg.ram.watts_per_gb)
    raise ValueError(name)


def _describe(probe: Probe) -> tuple[str, ...]:
    notes = []
    if getattr(probe, "tdp_note", ""):
        notes.append(f"TDP {probe.tdp_watts:g} W ({probe.tdp_note})")
    modes = getattr(probe, "modes", None)
    if modes:
        notes.extend(f"{d}: {m}" for d, m in modes.items())
    skipped = getattr(probe, "skipped", None)
    if skipped:
        notes.extend(f"skipped {d}: {why}" for d, why in dict(skipped).items())
    return tuple(notes)


def discover(cfg: Config) -> tuple[list[Probe], list[ProbeReport]]:
    """Start every probe that can run; report each one, running or not."""
    paths = Paths(sysfs=Path(cfg.paths.sysfs), procfs=Path(cfg.paths.procfs))
    probes: list[Probe] = []
    reports: list[ProbeReport] = []
    covered: dict[str, str] = {}  # kind of device -> the probe that measures it
    host_meter = ""  # the probe that measures the whole host, when one does
    for name in PROBE_NAMES:
        if name in cfg.probes.disabled:
            reports.append(ProbeReport(name, False, "disabled in probes.disabled"))
            continue
        if name in ("cpu_model", "amd_energy") and "cpu" in covered:
            reports.append(ProbeReport(name, False, "not needed: the CPU is measured by "
                                       + covered["cpu"]))
            continue
        if name == "ram_model" and "dram" in covered:
            reports.append(ProbeReport(name, False, "not needed: memory is measured by "
                                       + covered["dram"]))
            continue
        if name in ("redfish", "ipmi") and host_meter:
            reports.append(ProbeReport(name, False, "not needed: the whole host is measured "
                                       f"by {host_meter}"))
            continue
        try:
            probe = _make(name, cfg, paths, dict(covered))
        except ProbeUnavailable as e:
            reports.append(ProbeReport(name, False, str(e)))
            continue
        probes.append(probe)
        for kind in probe.covers:
            covered.setdefault(kind, probe.name)
        if not host_meter and any(d.scope == HOST for d in probe.devices):
            host_meter = probe.name
        notes = _describe(probe)
        reports.append(ProbeReport(name, True, "; ".join(notes),
                                   tuple(_device_line(d) for d in probe.devices), notes))
    return probes, reports


def _device_line(d: Device) -> str:
    how = "declared" if d.source == "declared" else "estimated" if d.estimated else "measured"
    where = ", the whole host" if d.scope == HOST else ", beside the host" if \
        d.scope == BESIDE else ""
    return f"{d.id} ({d.kind}, {how}{where})"
