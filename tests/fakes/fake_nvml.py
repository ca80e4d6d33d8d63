"""A fake of the `pynvml` module that behaves like NVML on a host with GPUs.

It raises the REAL exception classes of the installed pynvml (`pynvml.NVMLError(code)` maps the
code to its generated subclass, e.g. NVML_ERROR_GPU_IS_LOST -> NVMLError_GpuIsLost), and
re-exports them with the NVML_ERROR_* constants, so a probe's `except nvml.NVMLError_...`
clauses run exactly as they do in production.

NVML behaviour reproduced:
- device functions before nvmlInit (or after the last nvmlShutdown) raise NVMLError_Uninitialized;
  nvmlInit/nvmlShutdown are reference counted, and a surplus nvmlShutdown raises Uninitialized;
- nvmlInit can fail as on a host without the driver (LIBRARY_NOT_FOUND, DRIVER_NOT_LOADED, ...);
- an out-of-range index or a foreign handle raises NVMLError_InvalidArgument;
- the energy counter is an int of mJ since driver load; GPUs before Volta raise NotSupported;
- power usage is an int of mW;
- a lost GPU (`FakeGpu.lose()`) still counts in nvmlDeviceGetCount but every call on it,
  handle lookup included, raises NVMLError_GpuIsLost;
- a GPU the user may not open raises NVMLError_NoPermission from nvmlDeviceGetHandleByIndex;
- processes: `nvmlDeviceGetComputeRunningProcesses` returns the friendly objects pynvml builds
  from c_nvmlProcessInfo_t (pid, usedGpuMemory in bytes, None where NVML cannot say);
  `nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)` returns the driver's
  c_nvmlProcessUtilizationSample_t ring of samples newer than the timestamp (µs), one per busy
  process each time the GPU's time advances, raises NVMLError_NotFound when there is none, and
  NVMLError_NotSupported on GPUs without per-process accounting (`process_utilization=False`).

In process: build `FakeNvml([FakeGpu(...), ...])`, pass it as the probe's `nvml`, and move time
with `fake.advance(seconds)` (or `gpu.advance`).

Out of process (a `carbonmeter serve` subprocess): write the state with `write_state(path, gpus)`
and set FAKE_NVML_STATE=path in the child's environment; in the child, before
anything imports pynvml, call `install_from_env()`, which puts the fake in
sys.modules["pynvml"] (e.g. from a sitecustomize.py on the child's PYTHONPATH:
`import os` / `if os.environ.get("FAKE_NVML_STATE"):` /
`from tests.fakes.fake_nvml import install_from_env; install_from_env()`). The state file is JSON:

    {"start_monotonic": 12345.6,          # optional; time.monotonic() when energy began to count
     "driver_version": "550.54.15",       # optional; what nvmlSystemGetDriverVersion returns
     "init_error": "LIBRARY_NOT_FOUND",   # optional; nvmlInit raises NVML_ERROR_<this>
     "gpus": [{"name": "NVIDIA A100-SXM4-40GB", "uuid": "GPU-...", "power_mw": 250000,
               "energy_counter": true, "power_supported": true, "energy_mj": 0,
               "error": null}]}            # error: NVML_ERROR_<name> every call raises, or null

Energy is `energy_mj + power_mw × seconds` since start_monotonic (default: when the child loaded
the file); Linux's monotonic clock is system-wide, so parent and child agree on it. The child
re-reads the file on every device call, so the parent can change `power_mw` or set
`"error": "GPU_IS_LOST"` mid-run (write_state replaces the file atomically); energy accrues at
the old power up to that moment.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pynvml

STATE_ENV = "FAKE_NVML_STATE"

# The real error machinery, re-exported so this module can stand in for pynvml.
NVMLError = pynvml.NVMLError
_ERROR_NAMES = [n for n in dir(pynvml) if n.startswith(("NVMLError", "NVML_ERROR_"))]
for _name in _ERROR_NAMES:
    globals()[_name] = getattr(pynvml, _name)
NVML_SUCCESS = pynvml.NVML_SUCCESS


def error_code(name: str | int) -> int:
    """NVML_ERROR_<name> as a number: "GPU_IS_LOST" -> 15; numbers pass through."""
    if isinstance(name, int):
        return name
    return int(getattr(pynvml, "NVML_ERROR_" + name.upper().removeprefix("NVML_ERROR_")))


def _raise(code: int) -> None:
    # NVMLError.__new__ turns the code into its generated subclass, as pynvml's own
    # _nvmlCheckReturn does.
    raise pynvml.NVMLError(code)


class FakeGpu:
    """One GPU: its identity, what NVML supports on it, and a power draw a test can set."""

    def __init__(
        self,
        name: str = "NVIDIA A100-SXM4-40GB",
        uuid: str = "GPU-00000000-0000-0000-0000-000000000000",
        *,
        power_mw: int = 100_000,
        energy_counter: bool = True,
        power_supported: bool = True,
        energy_mj: float = 0,
        permitted: bool = True,
        processes: dict[int, int | None] | None = None,
        sm_util: dict[int, int] | None = None,
        process_utilization: bool = True,
        max_limit_mw: int | None = None,
    ) -> None:
        self.name = name
        # the highest power limit the board allows (nvmlDeviceGetPowerManagementLimitConstraints'
        # maxLimit, mW); None: NVML says Not Supported, as on boards without power management
        self.max_limit_mw = max_limit_mw
        self.uuid = uuid
        self.power_mw = power_mw
        self.energy_counter = energy_counter  # Volta and newer
        self.power_supported = power_supported
        self.permitted = permitted
        self.error: int | None = None  # an NVML error code every call on this GPU raises
        self._energy_mj = float(energy_mj)
        self.processes: dict[int, int | None] = dict(processes or {})  # pid -> bytes held
        self.sm_util: dict[int, int] = dict(sm_util or {})  # pid -> SM utilisation, percent
        self.process_utilization = process_utilization
        self.now_us = 1_700_000_000_000_000  # the driver's sample clock
        self.samples: list[tuple[int, int, int]] = []  # (timestamp µs, pid, smUtil)

    @property
    def energy_mj(self) -> int:
        """What nvmlDeviceGetTotalEnergyConsumption returns: whole mJ."""
        return int(self._energy_mj)

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass at the current power (mW × s = mJ); busy processes get a
        utilisation sample."""
        self._energy_mj += self.power_mw * seconds
        if seconds > 0:
            self.now_us += int(seconds * 1e6)
            self.samples.extend((self.now_us, pid, u) for pid, u in self.sm_util.items() if u)
            del self.samples[:-256]  # the driver keeps a bounded ring

    def lose(self) -> None:
        """The GPU falls off the bus: every later call raises NVMLError_GpuIsLost."""
        self.error = pynvml.NVML_ERROR_GPU_IS_LOST

    def fail(self, code: str | int | None) -> None:
        """Every later call raises NVML_ERROR_<code> (None: recover)."""
        self.error = None if code is None else error_code(code)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uuid": self.uuid,
            "power_mw": self.power_mw,
            "energy_counter": self.energy_counter,
            "power_supported": self.power_supported,
            "energy_mj": self._energy_mj,
            "permitted": self.permitted,
            "error": self.error,
            "processes": {str(k): v for k, v in self.processes.items()},
            "sm_util": {str(k): v for k, v in self.sm_util.items()},
            "process_utilization": self.process_utilization,
            "max_limit_mw": self.max_limit_mw,
        }


class _Handle:
    """Opaque like c_nvmlDevice_t: only the fake that issued it accepts it."""

    __slots__ = ("fake", "gpu")

    def __init__(self, fake: FakeNvml, gpu: FakeGpu) -> None:
        self.fake = fake
        self.gpu = gpu


class FakeNvml:
    """Stands in for the pynvml module; `calls` counts every function called, by name."""

    NVML_SUCCESS = pynvml.NVML_SUCCESS

    def __init__(
        self,
        gpus: Iterable[FakeGpu] = (),
        *,
        init_error: str | int | None = None,
        bytes_strings: bool = False,
        clock: Callable[[], float] | None = None,
        driver_version: str = "550.54.15",
    ) -> None:
        self.gpus = list(gpus)
        self.driver_version = driver_version
        self.init_error = None if init_error is None else error_code(init_error)
        self.bytes_strings = bytes_strings  # pynvml before 11.515 returned bytes
        self.calls: Counter[str] = Counter()
        self.refcount = 0
        self._clock = clock
        self._last = clock() if clock is not None else 0.0
        self._state_path: Path | None = None

    # -- test controls --------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Let `seconds` pass on every GPU."""
        for gpu in self.gpus:
            gpu.advance(seconds)

    @property
    def initialized(self) -> bool:
        return self.refcount > 0

    # -- the pynvml functions -------------------------------------------------------------

    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            _raise(self.init_error)
        self.refcount += 1

    def nvmlShutdown(self) -> None:
        self.calls["nvmlShutdown"] += 1
        if self.refcount == 0:
            _raise(pynvml.NVML_ERROR_UNINITIALIZED)
        self.refcount -= 1

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        self._enter("nvmlSystemGetDriverVersion")
        return self._string(self.driver_version)

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not isinstance(index, int) or not 0 <= index < len(self.gpus):
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self.gpus[index]
        if gpu.error is not None:
            _raise(gpu.error)
        if not gpu.permitted:
            _raise(pynvml.NVML_ERROR_NO_PERMISSION)
        return _Handle(self, gpu)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        gpu = self._gpu("nvmlDeviceGetUUID", handle)
        return self._string(gpu.uuid)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        gpu = self._gpu("nvmlDeviceGetName", handle)
        return self._string(gpu.name)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetTotalEnergyConsumption", handle)
        if not gpu.energy_counter:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        gpu = self._gpu("nvmlDeviceGetPowerUsage", handle)
        if not gpu.power_supported:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(gpu.power_mw)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle: _Handle) -> list[int]:
        gpu = self._gpu("nvmlDeviceGetPowerManagementLimitConstraints", handle)
        if gpu.max_limit_mw is None:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return [min(100_000, gpu.max_limit_mw), gpu.max_limit_mw]  # [minLimit, maxLimit]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetComputeRunningProcesses", handle)
        out = []
        for pid, used in gpu.processes.items():
            info = pynvml.c_nvmlProcessInfo_t(
                pid=pid, usedGpuMemory=pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
                if used is None else used, gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF)
            obj = pynvml.nvmlStructToFriendlyObject(info)
            if obj.usedGpuMemory == pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
                obj.usedGpuMemory = None  # as pynvml does
            out.append(obj)
        return out

    def nvmlDeviceGetProcessUtilization(self, handle: _Handle, timeStamp: int) -> list[Any]:
        gpu = self._gpu("nvmlDeviceGetProcessUtilization", handle)
        if not gpu.process_utilization:
            _raise(pynvml.NVML_ERROR_NOT_SUPPORTED)
        found = [pynvml.c_nvmlProcessUtilizationSample_t(pid=pid, timeStamp=ts, smUtil=u,
                                                         memUtil=u // 2, encUtil=0, decUtil=0)
                 for ts, pid, u in gpu.samples if ts > timeStamp]
        if not found:
            _raise(pynvml.NVML_ERROR_NOT_FOUND)
        return found

    # -- internals ------------------------------------------------------------------------

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if self.refcount == 0:
            _raise(pynvml.NVML_ERROR_UNINITIALIZED)
        self._sync()

    def _gpu(self, name: str, handle: Any) -> FakeGpu:
        self._enter(name)
        if not isinstance(handle, _Handle) or handle.fake is not self:
            _raise(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = handle.gpu
        if gpu.error is not None:
            _raise(gpu.error)
        return gpu

    def _string(self, value: str) -> str | bytes:
        return value.encode() if self.bytes_strings else value

    def _sync(self) -> None:
        """Clock-driven fakes: accrue energy up to now, then pick up the state file's changes."""
        if self._clock is None:
            return
        now = self._clock()
        self.advance(now - self._last)
        self._last = now
        if self._state_path is not None:
            self._reload()

    def _reload(self) -> None:
        assert self._state_path is not None
        try:
            state = json.loads(self._state_path.read_text())
        except (OSError, ValueError):
            return  # keep the last state
        by_uuid = {g.get("uuid"): g for g in state.get("gpus", [])}
        for gpu in self.gpus:
            entry = by_uuid.get(gpu.uuid)
            if entry is None:
                continue
            gpu.power_mw = entry.get("power_mw", gpu.power_mw)
            _processes_from(gpu, entry)
            err = entry.get("error")
            gpu.error = None if err is None else error_code(err)


# Names a probe may look up on the module it was given.
for _name in _ERROR_NAMES:
    setattr(FakeNvml, _name, getattr(pynvml, _name))


def _processes_from(gpu: FakeGpu, entry: Mapping[str, Any]) -> None:
    gpu.processes = {int(k): v for k, v in (entry.get("processes") or {}).items()}
    gpu.sm_util = {int(k): v for k, v in (entry.get("sm_util") or {}).items()}
    gpu.process_utilization = entry.get("process_utilization", True)


def write_state(
    path: str | os.PathLike[str],
    gpus: Iterable[FakeGpu],
    *,
    init_error: str | int | None = None,
    start_monotonic: float | None = None,
    driver_version: str | None = None,
) -> Path:
    """Write (atomically) the JSON state file `load_from_env` reads."""
    path = Path(path)
    state: dict[str, Any] = {"gpus": [g.to_json() for g in gpus]}
    if init_error is not None:
        state["init_error"] = init_error
    if start_monotonic is not None:
        state["start_monotonic"] = start_monotonic
    if driver_version is not None:
        state["driver_version"] = driver_version
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
    return path


def load_from_env(
    environ: Mapping[str, str] | None = None, *, clock: Callable[[], float] = time.monotonic
) -> FakeNvml:
    """The fake described by the JSON file that FAKE_NVML_STATE names."""
    env = os.environ if environ is None else environ
    path = Path(env[STATE_ENV])
    state = json.loads(path.read_text())
    now = clock()
    elapsed = max(0.0, now - float(state.get("start_monotonic", now)))
    gpus = []
    for entry in state.get("gpus", []):
        gpu = FakeGpu(
            entry.get("name", "NVIDIA A100-SXM4-40GB"),
            entry["uuid"],
            power_mw=entry.get("power_mw", 100_000),
            energy_counter=entry.get("energy_counter", True),
            power_supported=entry.get("power_supported", True),
            energy_mj=entry.get("energy_mj", 0),
            permitted=entry.get("permitted", True),
            max_limit_mw=entry.get("max_limit_mw"),
        )
        if entry.get("error") is not None:
            gpu.fail(entry["error"])
        _processes_from(gpu, entry)
        gpu.advance(elapsed)
        gpus.append(gpu)
    fake = FakeNvml(gpus, init_error=state.get("init_error"), clock=clock,
                    driver_version=state.get("driver_version", "550.54.15"))
    fake._state_path = path
    return fake


def install_from_env() -> FakeNvml:
    """Make `import pynvml` in this process return the fake from FAKE_NVML_STATE."""
    fake = load_from_env()
    sys.modules["pynvml"] = fake  # type: ignore[assignment]
    return fake
