"""Per-device cumulative energy and emissions, exact across counter wraps and gaps.

Counter sources add the counter's increase; power sources are integrated over the
monotonic time between reads. Each interval's energy is priced at the intensity
that held then, so emissions are Σ ΔE × PUE × C(t) and never rewritten.

A *gap* is time a device was not observed: the exporter was down, stopped or
suspended, or its probe failed. Energy spent in a gap is taken from a hardware
counter only when the counter provably continued (see `_gap_energy`); otherwise
the gap's length is added to the device's unmeasured seconds and nothing is guessed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from carbonmeter.carbon.intensity import Intensity, grams
from carbonmeter.probes.base import Device, Reading
from carbonmeter.snapshot import DeviceTotal

log = logging.getLogger(__name__)

# Power assumed for a wrapping counter whose probe gives no bound (Device.max_power_w):
# twice the 500 W of the most power-hungry server CPU packages of 2024, far above any
# RAPL zone. A gap is recovered from such a counter only while shorter than its wrap
# period at this power (262 s for a 262 kJ RAPL range).
DEFAULT_MAX_POWER_W = 1000.0
# Power believed possible for a device that declares no bound and does not wrap (a GPU's
# energy counter, a BMC's or hwmon's power): 100 kW, more than any one server draws (an
# 8-GPU server draws about 10 kW). Only what no machine could spend is refused by it.
POWER_CEILING_W = 100_000.0
# The largest raw counter any source keeps: NVML's 64-bit count of mJ, in µJ.
COUNTER_MAX_UJ = (2**64 - 1) * 1000
# Counters that the hardware or its driver update in steps (NVML's every ~100 ms, a
# powermetrics or Power Gadget sample) may show a whole step's energy in a shorter
# interval: an interval's energy is bounded by the power bound over at least this long.
STEP_S = 1.0


class Refused(ValueError):
    """A reading no device could give (not an integer, outside its range, an impossible
    power): reported as the probe's error, never counted; the last good reading stays the
    baseline."""


def power_bound_w(dev: Device) -> float:
    """The most power `dev` can draw: its own bound, else the defaults above."""
    if dev.max_power_w:
        return dev.max_power_w
    return DEFAULT_MAX_POWER_W if dev.wrap_uj is not None else POWER_CEILING_W


def refuse(reading: Reading) -> str | None:
    """Why `reading` cannot be true, or None: what every source's readings must pass,
    whatever its probe checked already."""
    dev, c, p = reading.device, reading.counter_uj, reading.power_w
    if c is not None:
        if type(c) is not int:
            return f"energy counter {c!r} is not an integer"
        top = COUNTER_MAX_UJ if dev.wrap_uj is None else dev.wrap_uj
        if not 0 <= c <= top:
            return f"energy counter {c} µJ is outside its range (0 to {top:.0f})"
    if p is not None:
        bound = power_bound_w(dev)
        if type(p) not in (int, float) or not math.isfinite(p) or not 0 <= p <= bound:
            return f"power {p!r} W is outside 0 to {bound:g} W"
    return None


def counter_delta_uj(prev: int, now: int, wrap_uj: float | None) -> float | None:
    """Increase of a hardware energy counter between two reads, in µJ, taking a decrease
    as one wrap.

    A counter that reads lower than before wrapped once (it restarts from zero after
    `wrap_uj`): the increase is what was left to the wrap plus what it counted since.
    Two wraps between reads are undetectable, which is why the sampling interval must
    stay below one wrap period (about 60 s at 4 kW for a 262 kJ RAPL range). A counter
    without a wrap that goes back was reset (driver reload): None, nothing is counted.
    Whether the increase is possible at all is `counter_energy`'s question.
    """
    if now >= prev:
        return float(now - prev)
    if wrap_uj is None:
        return None
    return (wrap_uj - prev) + now


def counter_energy(old: Device, new: Device, prev: int, now: int,
                   dt: float) -> tuple[float | None, str]:
    """(joules, "") that a counter proves were spent over `dt` seconds, or (None, why not):
    the counter was reset (driver reload, re-registered zone) or cannot be believed.

    Proof needs the same counter (range and identity unchanged) and an increase the
    device could spend: a decrease is a wrap only when what was left to the wrap plus
    what it counted since fits within its power bound over `dt`, and so must a rise.
    """
    if (old.wrap_uj, old.identity) != (new.wrap_uj, new.identity):
        return None, "its range or identity changed (driver reload or re-registered zone?)"
    delta = counter_delta_uj(prev, now, new.wrap_uj)
    if delta is None:
        return None, f"it went back from {prev} to {now} µJ and never wraps"
    bound = power_bound_w(new)
    joules = delta / 1e6
    if joules > bound * max(dt, STEP_S):
        what = (f"it rose from {prev} to {now} µJ:" if now >= prev else
                f"it went back from {prev} to {now} µJ; as a wrap,")
        return None, f"{what} {joules:.3f} J in {dt:.3g} s, more than {bound:g} W can spend"
    return joules, ""


@dataclass(frozen=True, slots=True)
class EnergyDelta:
    """What one device spent between its last two readings: for sharing it out."""

    device: Device
    energy_j: float
    seconds: float


@dataclass(slots=True)
class _Track:
    device: Device
    energy_j: float = 0.0
    emissions_g: float = 0.0
    power_w: float | None = None
    counter: int | None = None
    power: float | None = None
    t: float | None = None  # clock time of the last reading
    wall: float | None = None  # wall-clock time of the last reading, for the state file
    unmeasured_s: float = 0.0
    gap: bool = False  # the next reading ends a gap (lost, or restored from a checkpoint)
    restored: bool = False  # that gap is a restart's: worth a line in the log


class Accounting:
    """Totals for every device ever seen, in first-seen order.

    `gap_seconds`: time between two readings of a device beyond which the interval is
    treated as a gap (a stopped or suspended process) rather than a late sample.
    """

    def __init__(self, pue: float, *, gap_seconds: float = math.inf) -> None:
        self.pue = pue
        self.gap_seconds = gap_seconds
        self._tracks: dict[str, _Track] = {}

    def add(self, reading: Reading, t: float, intensity: Intensity,
            wall: float | None = None) -> EnergyDelta | None:
        """Fold one reading taken at clock time `t` (wall-clock `wall`) into its device's
        totals; returns the energy it added, if any, for sharing it out. A reading that
        cannot be true raises Refused and leaves the device as it was."""
        why = refuse(reading)
        if why is not None:
            raise Refused(why)
        dev = reading.device
        tr = self._tracks.get(dev.id)
        if tr is None:
            tr = self._tracks[dev.id] = _Track(dev)
        dt = None if tr.t is None else t - tr.t
        if dt is not None and dt <= 0:
            return None  # same instant twice (or a clock that went back): nothing to add
        if dt is not None and (tr.gap or dt > self.gap_seconds):
            energy = self._gap_energy(tr, reading, dt)
            if energy is None:
                tr.unmeasured_s += dt
            log.log(logging.INFO if tr.restored else logging.DEBUG, "%s: %s over a gap of %.1f s",
                    dev.id, "unmeasured" if energy is None else
                    f"{energy:.3f} J recovered from the counter", dt)
            tr.device, tr.gap, tr.restored, tr.power_w = dev, False, False, None
            self._baseline(tr, reading, t, wall)
            if energy is None:
                return None
            self._count(tr, energy, intensity)
            return EnergyDelta(dev, energy, dt)
        energy = None
        if reading.counter_uj is not None:
            if tr.counter is not None and dt is not None:
                energy, why = counter_energy(tr.device, dev, tr.counter, reading.counter_uj,
                                             dt)
                if energy is None:  # a reset: count from the new value on
                    log.warning("%s: energy counter reset: %s; counting from %d µJ on, the "
                                "%.3g s before unmeasured", dev.id, why, reading.counter_uj, dt)
                    tr.unmeasured_s += dt
                    tr.power_w = None
        elif reading.power_w is not None and tr.power is not None and dt is not None:
            mean = reading.power_w if dev.mean_power else (tr.power + reading.power_w) / 2
            energy = mean * dt
        tr.device = dev
        self._baseline(tr, reading, t, wall)
        if energy is None or dt is None:
            return None
        self._count(tr, energy, intensity)
        tr.power_w = energy / dt
        return EnergyDelta(dev, energy, dt)

    @staticmethod
    def _baseline(tr: _Track, reading: Reading, t: float, wall: float | None) -> None:
        tr.counter = reading.counter_uj
        tr.power = reading.power_w
        tr.t, tr.wall = t, wall

    def _count(self, tr: _Track, energy: float, intensity: Intensity) -> None:
        tr.energy_j += energy
        tr.emissions_g += grams(energy, self.pue, intensity)

    @staticmethod
    def _gap_energy(tr: _Track, reading: Reading, dt: float) -> float | None:
        """Joules spent over a gap of `dt` seconds, when a counter proves it; else None.

        Proof needs what `counter_energy` asks of every interval (the same counter, whose
        identity and range a restore from another boot never keeps: see `restore`; an
        increase the device could spend), and of a wrapping counter, that it was
        unobserved for less than one wrap period at its power bound (else it may have
        wrapped more than once).
        """
        old, new = tr.device, reading.device
        if tr.counter is None or reading.counter_uj is None:
            return None
        if (old.kind, old.source) != (new.kind, new.source):
            return None
        if new.wrap_uj is not None and dt >= new.wrap_uj / 1e6 / power_bound_w(new):
            return None
        return counter_energy(old, new, tr.counter, reading.counter_uj, dt)[0]

    def lost(self, device_id: str) -> None:
        """A device that was not read: its power is unknown, and the time until it is
        read again is a gap."""
        tr = self._tracks.get(device_id)
        if tr is not None:
            tr.power_w = None
            tr.gap = True

    def integrates_power(self) -> bool:
        """True when some device reports power, whose energy depends on how often it is read."""
        return any(t.power is not None for t in self._tracks.values())

    def totals(self) -> tuple[DeviceTotal, ...]:
        return tuple(DeviceTotal(t.device, t.energy_j, t.emissions_g, t.power_w,
                                 t.unmeasured_s) for t in self._tracks.values())

    # -- checkpoints ----------------------------------------------------------------------

    def export(self) -> list[dict[str, Any]]:
        """Every track as plain data for the state file: totals, and the last raw reading
        with its clock and wall time, which a restart needs to judge the gap."""
        return [{
            "id": tr.device.id, "kind": tr.device.kind, "source": tr.device.source,
            "name": tr.device.name, "estimated": tr.device.estimated,
            "wrap_uj": tr.device.wrap_uj, "identity": tr.device.identity,
            "max_power_w": tr.device.max_power_w, "mean_power": tr.device.mean_power,
            "energy_j": tr.energy_j, "emissions_g": tr.emissions_g,
            "unmeasured_s": tr.unmeasured_s,
            "counter_uj": tr.counter, "t": tr.t, "wall": tr.wall,
        } for tr in self._tracks.values()]

    def restore(self, devices: Iterable[Mapping[str, Any]], *, same_boot: bool, now: float,
                wall_now: float) -> None:
        """Continue from a checkpoint (`export()` output, already validated).

        Totals continue. The time from each device's last checkpointed reading to its
        next reading is a gap. On the same boot, the clock (boot time, which counts
        suspend) measures it and the old raw counter may prove the energy spent; after
        a reboot counters restarted, so the gap is unmeasured, sized on the wall clock,
        the only clock that spans boots (never negative).
        """
        for d in devices:
            dev = Device(d["id"], d["kind"], d["source"], name=d["name"],
                         estimated=d["estimated"], wrap_uj=d["wrap_uj"],
                         mean_power=d["mean_power"], identity=d["identity"],
                         max_power_w=d["max_power_w"])
            tr = _Track(dev, energy_j=d["energy_j"], emissions_g=d["emissions_g"],
                        unmeasured_s=d["unmeasured_s"], wall=d["wall"], gap=True,
                        restored=True)
            if same_boot and d["t"] is not None and d["t"] <= now:
                tr.t, tr.counter = d["t"], d["counter_uj"]
            elif d["wall"] is not None:
                tr.t = now - max(0.0, wall_now - d["wall"])
            self._tracks[dev.id] = tr
