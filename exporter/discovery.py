"""Which probes run on this machine, and why the others do not.

Probes are tried in the order their SPECs give (carbonmeter.probes.registry): component
sensors first (RAPL, then the amd_energy driver and hwmon for what RAPL does not cover, then
GPUs and the macOS/Windows tools), then whole-host meters (Redfish when configured, else
IPMI), then declared devices, and the estimates last. A later source stands down for what an
earlier one already measures (its SPEC's `replaces`), so a CPU is never counted by both RAPL
and the load model, and the host by two meters.

`serve` discovers once at start. A measurement of code (`track()`, `carbonmeter run`) takes
`shared(cfg)`: the probes discovered once per process and configuration, read through a reader
of its own (`Probe.reader()`), so only the first measurement in a process pays for discovery.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from carbonmeter.config import Config
from carbonmeter.probes import registry
from carbonmeter.probes.base import (
    BESIDE,
    HOST,
    Device,
    Paths,
    Probe,
    ProbeContext,
    ProbeUnavailable,
)

log = logging.getLogger(__name__)

# What a probe stands down for, as `carbonmeter probes` says it.
MEASURED = {"cpu": "the CPU", "dram": "memory", HOST: "the whole host"}


@dataclass(frozen=True)
class ProbeReport:
    name: str
    available: bool
    reason: str = ""  # why not, or the notes on how it measures, in one line
    devices: tuple[str, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = field(default_factory=tuple)  # how it measures, one per line
    # not run by choice (probes.disabled) or because another source measures its devices;
    # False for a probe that could not run here (then `reason` says why)
    stood_down: bool = False


def discover(cfg: Config) -> tuple[list[Probe], list[ProbeReport]]:
    """Start every probe that can run; report each one, running or not."""
    paths = Paths(sysfs=Path(cfg.paths.sysfs), procfs=Path(cfg.paths.procfs),
                  devfs=Path(cfg.paths.devfs))
    probes: list[Probe] = []
    reports: list[ProbeReport] = []
    measured: dict[str, str] = {}  # kind of device (or "host") -> the probe that measures it
    for spec in registry():
        if spec.name in cfg.probes.disabled:
            reports.append(ProbeReport(spec.name, False, "disabled in probes.disabled",
                                       stood_down=True))
            continue
        taken = [k for k in sorted(spec.replaces) if k in measured]
        if taken:
            reports.append(ProbeReport(spec.name, False, "not needed: " + "; ".join(
                f"{MEASURED.get(k, k)} is measured by {measured[k]}" for k in taken),
                stood_down=True))
            continue
        settings = cfg.section(spec.section) if spec.section else None
        context = ProbeContext(paths, cfg.sampler.interval_seconds, dict(measured))
        try:
            probe = spec.make(settings, context)
        except ProbeUnavailable as e:
            reports.append(ProbeReport(spec.name, False, str(e)))
            continue
        probes.append(probe)
        for kind in probe.covers:
            measured.setdefault(kind, probe.name)
        if any(d.scope == HOST for d in probe.devices):
            measured.setdefault(HOST, probe.name)
        notes = probe.notes()
        reports.append(ProbeReport(spec.name, True, "; ".join(notes),
                                   tuple(_device_line(d) for d in probe.devices), notes))
    return probes, reports


@dataclass(eq=False)
class Shared:
    """One discovery, shared by the measurements that use it (`users`); one that is no longer
    `current` (a probe failed, or forget()) is closed when its last user releases it."""

    key: str
    probes: list[Probe]
    reports: list[ProbeReport]
    users: int = 0
    current: bool = True


_shared: dict[str, Shared] = {}
_shared_lock = threading.Lock()


def _key(cfg: Config) -> str:
    """What discovery depends on: the settings it reads, and the two variables outside the
    configuration that change what it finds (PATH: the tools it runs; CUDA_VISIBLE_DEVICES:
    the GPUs NVML selects)."""
    sections = tuple(cfg.section(s.section) for s in registry() if s.section)
    return repr((cfg.paths, cfg.probes, cfg.sampler.interval_seconds, sections,
                 os.environ.get("PATH"), os.environ.get("CUDA_VISIBLE_DEVICES")))


def shared(cfg: Config) -> Shared:
    """The probes for `cfg`, discovered on first use in this process; release() when done."""
    key = _key(cfg)
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = Shared(key, *discover(cfg))
        entry.users += 1
        return entry


def release(entry: Shared, *, failed: bool = False) -> None:
    """A measurement is done with `entry`. `failed` (a probe's read failed during it): the
    next measurement discovers again, as a restarted process would."""
    with _shared_lock:
        entry.users -= 1
        if failed:
            _retire(entry)
        done = not entry.current and entry.users == 0
    if done:
        _close(entry)


def forget() -> None:
    """Discover again at the next measurement (the machine changed: a test's fixture tree, a
    GPU plugged in); probes in use are closed when their last user releases them."""
    with _shared_lock:
        entries = list(_shared.values())
        for entry in entries:
            _retire(entry)
        idle = [e for e in entries if e.users == 0]
    for entry in idle:
        _close(entry)


def _retire(entry: Shared) -> None:
    if entry.current:
        entry.current = False
        if _shared.get(entry.key) is entry:
            del _shared[entry.key]


def _close(entry: Shared) -> None:
    for probe in entry.probes:
        try:
            probe.close()
        except Exception as e:  # closing must never fail a measurement
            log.debug("closing %s: %s", probe.name, e)


def unavailable(reports: list[ProbeReport]) -> dict[str, str]:
    """Probe name -> why it could not run here (not those that stood down)."""
    return {r.name: r.reason for r in reports if not r.available and not r.stood_down}


def _device_line(d: Device) -> str:
    how = "declared" if d.source == "declared" else "estimated" if d.estimated else "measured"
    if d.error is not None:
        how += f", ± {d.error[0] * 100:.0f} % idle to ± {d.error[1] * 100:.0f} % at full load"
    where = ", the whole host" if d.scope == HOST else ", beside the host" if \
        d.scope == BESIDE else ""
    return f"{d.id} ({d.kind}, {how}{where})"
