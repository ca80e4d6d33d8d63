"""The one interface every power source implements, and how a probe declares itself.

A probe knows hardware and nothing else: it discovers devices once, then on each
`read()` returns what the hardware says right now. It never integrates, never
knows about carbon or exposition formats; the exporter does that, once, for all.

Each probe module ends with a `SPEC` (ProbeSpec): its name, its place in discovery, its
settings (a section of the configuration) and its factory. `carbonmeter.probes.registry()`
collects them, so a new probe is its module, its section of the default configuration and its
tests; neither discovery nor the configuration code lists probes by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

KINDS = ("cpu", "dram", "gpu", "ram", "platform", "other")

# Where a device's energy goes in the host totals (carbonmeter.snapshot.counted):
PART = "part"  # a component inside the host (a CPU package, a GPU): summed into the host total
HOST = "host"  # a meter of the whole host (the BMC over IPMI or Redfish, an ACPI power meter):
# when one runs, it IS the host total and the parts stay a breakdown, never added to it
BESIDE = "beside"  # outside the host yet accounted with it (a declared switch): always added
SCOPES = (PART, HOST, BESIDE)


class ProbeUnavailable(Exception):
    """The probe cannot run here. The message is one line a person can act on."""


@dataclass(frozen=True, slots=True)
class Device:
    """One thing that draws power, as users see it in labels."""

    id: str  # stable within a host: "package-0", "dram-1", "gpu-0"
    kind: str  # one of KINDS
    source: str  # the probe that measures it: "rapl", "nvml", "cpu_model", ...
    name: str = ""  # human description: CPU or GPU model
    estimated: bool = False  # True when the number comes from a model, not a sensor
    # Counter sources: the value after which the counter restarts from zero, in µJ
    # (the modulus of the counter). None for counters that never wrap and for
    # power sources.
    wrap_uj: float | None = None
    # Power sources: True when power_w is the mean since the previous read (a load
    # model over /proc/stat deltas), integrated as a rectangle; False when it is an
    # instantaneous sample (NVML, hwmon), integrated as a trapezoid.
    mean_power: bool = False
    # An identity the hardware itself carries, unique beyond this host (an NVIDIA GPU's
    # UUID), so a device can be followed across hosts and renumbering; "" when it has none.
    uid: str = ""
    scope: str = PART  # one of SCOPES
    # Counter sources: what must be unchanged for a raw value read after a gap (a
    # restart, a stopped process) to continue an older one: zone and range, GPU UUID
    # and driver version. Compared as a whole; "" when the probe knows nothing to add.
    identity: str = ""
    # Wrapping counters: an upper bound of the device's power in W, so that a gap
    # shorter than wrap_uj / max_power_w provably holds at most one wrap. None: the
    # exporter assumes a conservative bound (carbonmeter.accounting.DEFAULT_MAX_POWER_W).
    max_power_w: float | None = None
    # The id of the device this one sits in (a RAPL DRAM zone: its package), for
    # OpenTelemetry's hw.parent; topology only: a parent's energy need not include it.
    parent: str = ""
    # Estimated devices: the expected relative error of the estimate at idle and at full load
    # (from the model's held-out evaluation), and the device's estimated power at idle and at
    # full load, so a mean power tells the load it was spent at (`relative_error`). None for
    # measured devices: they have no error bar.
    error: tuple[float, float] | None = None
    power_range_w: tuple[float, float] | None = None


def relative_error(device: Device, power_w: float | None) -> float | None:
    """The expected relative error of an estimated device's figure at a (mean) power: linear
    in load between its idle and full-load errors; the midpoint for a device whose power does
    not follow load (RAM) or whose power is unknown. None for a measured device."""
    if device.error is None:
        return None
    idle, full = device.error
    lo, hi = device.power_range_w or (0.0, 0.0)
    if power_w is None or hi <= lo:
        return (idle + full) / 2
    load = min(1.0, max(0.0, (power_w - lo) / (hi - lo)))
    return idle + (full - idle) * load


@dataclass(frozen=True, slots=True)
class Reading:
    """What one device said at one instant: a raw energy counter or a power."""

    device: Device
    counter_uj: int | None = None  # raw, as the hardware counts (may wrap)
    power_w: float | None = None


@dataclass(frozen=True, slots=True)
class ProbeRead:
    """One pass over a probe's devices: what was read, and what went wrong."""

    readings: list[Reading]
    errors: list[str]  # one line a person can act on per failing device


@dataclass(frozen=True, slots=True)
class Paths:
    """Filesystem roots, so every probe can be pointed at a fixture tree."""

    sysfs: Path = Path("/sys")
    procfs: Path = Path("/proc")
    devfs: Path = Path("/dev")


class Probe(Protocol):
    """A power source. Construction discovers devices or raises ProbeUnavailable.

    Probes subclass this protocol, so the optional capabilities below have their defaults:

    - `may_block = False` when reads cannot hang: values the kernel keeps in memory or reads
      from a CPU register (powercap, procfs), or none at all. The exporter then reads the probe
      in the sampling thread; every other probe reads on a thread of its own under a timeout
      (carbonmeter.guard), which costs two thread hand-offs a read.
    - `modes` (device id -> how it is measured) and `skipped` ((what, why) pairs), which
      `notes()` turns into the lines `carbonmeter probes` prints under the probe.
    - `idle_watts()`: the power a model assumes for its devices at rest, for attribution's
      idle share; measured probes know none.
    - `reader()`: what one measurement reads. A measurement of code reuses the probes
      discovered once in the process (carbonmeter.discovery.shared), so each takes a reader:
      by default the probe itself behind a lock, which the reader never closes; a probe that
      keeps state between reads (a load model's previous /proc/stat times) gives each reader
      its own, so overlapping measurements do not disturb each other.
    """

    name: str
    devices: tuple[Device, ...]  # found at construction; fixed for the probe's life
    covers: frozenset[str]  # kinds of device it measures, so weaker sources stand down
    may_block: bool = True
    modes: Mapping[str, str] = MappingProxyType({})
    skipped: Sequence[tuple[str, str]] | Mapping[str, str] = ()

    def read(self) -> ProbeRead:
        """Read every device now. One failing device never hides the others."""
        ...

    def close(self) -> None:
        """Release what discovery opened (file descriptors, a library, a child process)."""

    def notes(self) -> tuple[str, ...]:
        """How it measures, one line each: per device, then what it left out and why."""
        skipped = dict(self.skipped)
        return (*(f"{d}: {m}" for d, m in self.modes.items()),
                *(f"skipped {d}: {why}" for d, why in skipped.items()))

    def idle_watts(self) -> dict[str, float]:
        """Device id -> the power this probe's model assumes at rest."""
        return {}

    def reader(self) -> Probe:
        """A reader of this probe for one measurement; closing it leaves the probe open."""
        return SharedReader(self)


class SharedReader(Probe):
    """A discovered probe as one of several measurements reads it: reads are serialised (a
    probe's handles need not be safe from two threads), and close() leaves the probe, which
    discovery owns, open."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.name = probe.name
        self.devices = probe.devices
        self.covers = probe.covers
        self.may_block = probe.may_block
        # one lock per probe, whoever reads it (setdefault is atomic)
        self._lock = vars(probe).setdefault("_read_lock", threading.Lock())

    def read(self) -> ProbeRead:
        with self._lock:
            return self.probe.read()

    def close(self) -> None:
        pass

    def notes(self) -> tuple[str, ...]:
        return self.probe.notes()

    def idle_watts(self) -> dict[str, float]:
        return self.probe.idle_watts()

    def reader(self) -> Probe:
        return SharedReader(self.probe)


def limits(**checks: Any) -> dict[str, Any]:
    """`field(**limits(min=0, max=100))`: what the configuration checks in a setting —
    min, max, choices, length, keys, values, a named check (file, url, listen, ...), secret."""
    return {"metadata": checks}


@dataclass(frozen=True, slots=True)
class ProbeContext:
    """What every probe factory may use besides its own settings."""

    paths: Paths
    interval: float  # the sampling interval, seconds
    # kind of device -> the probe that already measures it (earlier in discovery order)
    measured: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """How discovery finds, configures and starts one probe.

    `order` places it in discovery: component sensors first (10-69), whole-host meters
    (70-89), declared devices (90), estimates last (100+), so a later source can stand down
    for what an earlier one measures. `replaces`: kinds of device (or "host", a whole-host
    meter) whose measurement by an earlier probe makes this one unneeded. `settings` is the
    section's frozen dataclass (or list[...] for a list section such as `declared`), checked
    by the configuration with the limits of its fields; `make(settings, context)` builds the
    probe or raises ProbeUnavailable.
    """

    name: str
    order: int
    make: Callable[[Any, ProbeContext], Probe]
    section: str | None = None
    settings: Any = None
    replaces: frozenset[str] = frozenset()
