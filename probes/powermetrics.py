"""Apple Silicon CPU, GPU and Neural Engine energy from macOS ``powermetrics``.

One long-lived ``powermetrics --samplers cpu_power,gpu_power,ane_power -f plist -i MS``
streams one XML property list per interval, separated by NUL bytes. Each sample says what
was spent during its own interval (``elapsed_ns``): macOS 13 and later give mean power in
mW per component (``processor.cpu_power``, ``gpu_power``, ``ane_power``, and
``gpu.gpu_energy`` in mJ); macOS 12 gave energy in mJ (``processor.cpu_energy``,
``gpu_energy``, ``ane_energy``, ``dram_energy``). The probe adds every sample's energy to a
running total per component and reports that as an energy counter that never wraps, so the
exporter counts exactly what powermetrics measured whatever its own sampling interval.
``combined_power`` and ``package_energy`` contain the others and are never reported.

Samples arrive through a pipe in pieces: the stream is read without blocking at each
``read()`` and a sample is parsed once its ``</plist>`` has arrived, so a sample split at a
pipe boundary waits for its end. powermetrics needs root; without it, the probe says how to
allow it.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from carbonmeter.probes.base import (
    Device,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
    limits,
)

log = logging.getLogger(__name__)

SAMPLERS = "cpu_power,gpu_power,ane_power"
SUDOERS_LINE = "%admin ALL=(root) NOPASSWD: /usr/bin/powermetrics"
_END = b"</plist>"
_STARTUP_S = 0.3  # long enough for sudo or powermetrics to refuse, short enough to start fast
# A whole M2 Ultra draws about 300 W: a component's mean above 1 kW, or a sample longer than
# an hour (the probe asks for one every interval), is not a measurement.
MAX_COMPONENT_W = 1000.0
MAX_ELAPSED_S = 3600.0
_COMPONENTS = {  # key in the plist -> device
    "cpu": Device("cpu", "cpu", "powermetrics", name="Apple Silicon CPU clusters"),
    "gpu": Device("gpu", "gpu", "powermetrics", name="Apple Silicon GPU"),
    "ane": Device("ane", "other", "powermetrics", name="Apple Neural Engine"),
    "dram": Device("dram", "dram", "powermetrics", name="DRAM"),
}


def split_samples(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete plist documents at the front of `buffer`, and what is left (a partial one)."""
    samples = []
    while True:
        buffer = buffer.lstrip(b"\0 \t\r\n")
        end = buffer.find(_END)
        if end < 0:
            return samples, buffer
        end += len(_END)
        samples.append(buffer[:end])
        buffer = buffer[end:]


def parse_samples(docs: list[bytes]) -> tuple[list[dict[str, Any]], list[str]]:
    """The samples among `docs`, and one line per document that is not a plist."""
    import plistlib  # only on the hosts that run this probe

    samples, errors = [], []
    for doc in docs:
        try:
            sample = plistlib.loads(doc)
        except Exception as e:  # plistlib raises several kinds on a damaged document
            errors.append(f"powermetrics: skipped a sample that is not a plist: {e}")
            continue
        if isinstance(sample, dict):
            samples.append(sample)
    return samples, errors


def sample_energy_mj(sample: dict[str, Any]) -> dict[str, float]:
    """Energy per component during one sample, in mJ: mean power × elapsed where the sample
    gives power (macOS 13+), else the energy it gives (macOS 12). ValueError for a sample
    whose numbers no Mac could measure (negative, not finite, beyond MAX_COMPONENT_W)."""
    proc = sample.get("processor") or {}
    gpu = sample.get("gpu") or {}
    elapsed_ns = sample.get("elapsed_ns") or 0
    if not _number(elapsed_ns) or not 0 <= elapsed_ns <= MAX_ELAPSED_S * 1e9:
        raise ValueError(f"elapsed_ns {elapsed_ns!r} is not a sample's duration")
    elapsed_s = elapsed_ns / 1e9
    out: dict[str, float] = {}
    for comp in ("cpu", "gpu", "ane", "dram"):
        power = proc.get(f"{comp}_power")
        if _number(power) and elapsed_s > 0:
            out[comp] = float(power) * elapsed_s  # mW × s = mJ
        elif _number(proc.get(f"{comp}_energy")):
            out[comp] = float(proc[f"{comp}_energy"])
        elif comp == "gpu" and _number(gpu.get("gpu_energy")):
            out[comp] = float(gpu["gpu_energy"])
    limit_mj = MAX_COMPONENT_W * 1000 * (elapsed_s or MAX_ELAPSED_S)
    for comp, mj in out.items():
        if not (math.isfinite(mj) and 0 <= mj <= limit_mj):
            raise ValueError(f"{comp}: {mj!r} mJ in {elapsed_s:g} s is not a measurement")
    return out


class PowermetricsProbe(Probe):
    """CPU, GPU and ANE as energy counters built from powermetrics' samples."""

    name = "powermetrics"
    covers = frozenset({"cpu", "gpu"})

    def __init__(self, *, command: str = "/usr/bin/powermetrics", interval_ms: float = 1000,
                 system: str = sys.platform, machine: str | None = None,
                 euid: int | None = None) -> None:
        if system != "darwin":
            raise ProbeUnavailable("powermetrics is macOS's (Apple Silicon): not this system")
        if (machine or platform.machine()) != "arm64":
            raise ProbeUnavailable("an Intel Mac: powermetrics measures CPU, GPU and ANE on "
                                   "Apple Silicon only (Intel Macs: see powergadget)")
        exe = shutil.which(command)
        if exe is None:
            raise ProbeUnavailable(f"{command} not found (it ships with macOS)")
        root = (os.geteuid() if euid is None else euid) == 0
        self._argv = [*([] if root else ["sudo", "-n"]), exe, "--samplers", SAMPLERS,
                      "-f", "plist", "-i", str(max(100, round(interval_ms)))]
        self._buffer = b""
        self._totals_mj: dict[str, float] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        try:
            self._start()
        except ProbeUnavailable as e:
            if "ane_power" not in str(e):
                raise
            # macOS 12 has no ane_power sampler; its cpu_power sampler reports the ANE.
            self._argv[self._argv.index(SAMPLERS)] = "cpu_power,gpu_power"
            self._start()
        self.modes = {"cpu, gpu, ane": f"a sample every {self._argv[-1]} ms"}

    @property
    def devices(self) -> tuple[Device, ...]:
        comps = ["cpu", "gpu", "ane"] + (["dram"] if "dram" in self._totals_mj else [])
        return tuple(_COMPONENTS[c] for c in comps)

    def read(self) -> ProbeRead:
        if self._proc is None:  # died at the last read: start again
            try:
                self._start()
            except ProbeUnavailable as e:
                return ProbeRead([], [f"powermetrics: {e}"])
        ended = self._drain()
        docs, self._buffer = split_samples(self._buffer)
        samples, errors = parse_samples(docs)
        for sample in samples:
            try:
                energy = sample_energy_mj(sample)
            except ValueError as e:  # counted as nothing: the next sample goes on from here
                errors.append(f"powermetrics: skipped a sample: {e}")
                continue
            for comp, mj in energy.items():
                self._totals_mj[comp] = self._totals_mj.get(comp, 0.0) + mj
        if ended:
            errors.append(f"powermetrics: {self._stopped()}; starting it again")
        readings = [Reading(_COMPONENTS[c], counter_uj=round(mj * 1000))
                    for c, mj in self._totals_mj.items()]
        return ProbeRead(readings, errors)

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()

    # -- the process ----------------------------------------------------------------------------

    def _start(self) -> None:
        try:
            proc = subprocess.Popen(self._argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            hint = self._privilege_hint() if self._argv[0] == "sudo" else ""
            raise ProbeUnavailable(f"cannot run {self._argv[0]}: {e.strerror or e}{hint}") from e
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._proc = proc
        deadline = time.monotonic() + _STARTUP_S
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        if proc.poll() is not None:
            self._drain()
            raise ProbeUnavailable(self._stopped())

    def _drain(self) -> bool:
        """Append whatever the pipe holds now to the buffer; True when the stream ended."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                return False
            if not chunk:
                return True
            self._buffer += chunk

    def _stopped(self) -> str:
        """Why the process ended, in one line; forgets the process."""
        proc, self._proc = self._proc, None
        assert proc is not None
        code = proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()
        last = err.splitlines()[-1] if err else f"exit status {code}"
        if "superuser" in err or "password is required" in err or "sudoers" in err:
            return f"powermetrics needs root ({last})" + self._privilege_hint()
        return f"powermetrics stopped: {last}"

    @staticmethod
    def _privilege_hint() -> str:
        return (": run carbonmeter as root, or let it run powermetrics through sudo without a "
                f"password by adding this line with visudo: {SUDOERS_LINE}")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class PowermetricsConfig:
    """Section `powermetrics` (Apple Silicon)."""

    command: str = field(**limits(check="path"))
    interval_ms: float | None = field(**limits(min=100, max=3_600_000))  # None: the interval


def _make(settings: PowermetricsConfig, ctx: ProbeContext) -> PowermetricsProbe:
    return PowermetricsProbe(command=settings.command,
                             interval_ms=settings.interval_ms or ctx.interval * 1000)


SPEC = ProbeSpec("powermetrics", order=50, make=_make, section="powermetrics",
                 settings=PowermetricsConfig)
