"""NVIDIA GPUs through NVML (the `pynvml` module of NVIDIA's nvidia-ml-py).

Per GPU the probe takes the best number NVML offers, decided once at discovery:

- the total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, Volta and newer): mJ since
  the driver loaded, 64-bit, so it does not wrap in practice (`wrap_uj=None`); a decrease means
  the driver was reloaded, which the exporter's accounting treats as a counter reset;
- otherwise the power draw (`nvmlDeviceGetPowerUsage`, mW), which the exporter integrates.

`pynvml` is imported lazily in the constructor, not when this module is imported, so that
exporter start-up stays fast on hosts without GPUs; where neither the library nor a driver's
device node exists (`nvml_absent`), it is not imported at all (the import alone costs tens of
milliseconds, which every measurement in a short process would pay).

Devices are labelled `gpu-<NVML index>`. NVML indices are physical (PCI bus order, as
`nvidia-smi` numbers them); they are not CUDA ordinals, which under `CUDA_VISIBLE_DEVICES` are
relative to the visible list (with `CUDA_VISIBLE_DEVICES=2`, CUDA's device 0 is `gpu-2` here).
Inside a container started with `--gpus device=2`, NVML itself sees only that GPU, as index 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbonmeter.probes.base import (
    Device,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
)

log = logging.getLogger(__name__)

MODE_COUNTER = "energy counter"
MODE_POWER = "power"

NO_LIBRARY = (
    "NVML library libnvidia-ml.so.1 not found: no NVIDIA driver on this host, or the container "
    "was not started with the NVIDIA container runtime (--gpus / runtime: nvidia)"
)
NO_DRIVER = (
    "NVML found no loaded NVIDIA kernel driver: load it (modprobe nvidia, check nvidia-smi), or "
    "start the container with the NVIDIA container runtime (--gpus / runtime: nvidia)"
)
NOT_INSTALLED = (
    "pynvml not installed: pip install nvidia-ml-py (NVIDIA's binding, which provides the pynvml "
    "module)"
)

LIBRARY = "libnvidia-ml.so.1"
# Where the dynamic loader looks besides LD_LIBRARY_PATH and its cache (Debian, Red Hat).
_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/lib/x86_64-linux-gnu",
             "/usr/lib/aarch64-linux-gnu", "/usr/lib/wsl/lib")
# The driver's control node (Linux), and WSL's GPU node.
_DEVICE_NODES = ("nvidiactl", "dxg")


def nvml_absent(devfs: Path, *, ld_cache: Path = Path("/etc/ld.so.cache")) -> bool:
    """True on a Linux host that cannot have NVML: no driver device node in `devfs` and no
    libnvidia-ml.so.1 where the dynamic loader finds libraries. Either one present: NVML is
    tried (it creates missing nodes itself through nvidia-modprobe)."""
    if not sys.platform.startswith("linux"):
        return False
    if any((devfs / node).exists() for node in _DEVICE_NODES):
        return False
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    if any(os.path.exists(os.path.join(d, LIBRARY)) for d in (*dirs, *_LIB_DIRS)):
        return False
    try:
        return LIBRARY.encode() not in ld_cache.read_bytes()
    except OSError:
        return True


# nvmlReturn_t values from the NVML C API (stable ABI); older pynvml releases lack some of the
# NVML_ERROR_* names, so the numbers are written out here.
_ERR_UNINITIALIZED = 1
_ERR_NOT_SUPPORTED = 3
_ERR_NO_PERMISSION = 4
_ERR_DRIVER_NOT_LOADED = 9
_ERR_TIMEOUT = 10
_ERR_FUNCTION_NOT_FOUND = 13
_ERR_GPU_IS_LOST = 15
_ERR_RESET_REQUIRED = 16
_ERR_LIB_RM_VERSION_MISMATCH = 18
_ERR_UNKNOWN = 999

_REASONS = {
    _ERR_GPU_IS_LOST: "GPU is lost (fell off the bus?): see Xid errors in dmesg; it needs a "
    "reset or the host a reboot",
    _ERR_NOT_SUPPORTED: "NVML says Not Supported for a reading that worked at discovery",
    _ERR_RESET_REQUIRED: "GPU requires a reset (nvidia-smi --gpu-reset) or a reboot",
    _ERR_UNINITIALIZED: "NVML is not initialised (was the probe closed?)",
    _ERR_UNKNOWN: "NVML unknown error: check nvidia-smi and dmesg",
    _ERR_NO_PERMISSION: "insufficient permissions for this GPU (NVML No Permission)",
    _ERR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is no longer loaded",
    _ERR_TIMEOUT: "NVML timed out talking to the GPU",
    _ERR_FUNCTION_NOT_FOUND: "the installed driver lacks this NVML function: upgrade the driver",
    _ERR_LIB_RM_VERSION_MISMATCH: "NVML library and NVIDIA kernel driver versions differ "
    "(driver upgraded without a reboot?): reboot or reload the nvidia kernel modules",
}

# Values of CUDA_VISIBLE_DEVICES that schedulers set to hide every GPU.
_HIDE_ALL = ("", "-1", "NoDevFiles")


def _unsigned(value: object, bits: int, what: str) -> int:
    """An integer as NVML's C API returns it (unsigned long long energy, unsigned int power);
    ValueError for anything else, which a broken library or binding could hand back."""
    if type(value) is not int or not 0 <= value < 2**bits:
        raise ValueError(f"NVML returned {value!r} as its {what}, not a {bits}-bit count")
    return value


def describe_error(err: Exception) -> str:
    """One line for an NVML error, saying what to do about it where that is known."""
    code = getattr(err, "value", None)
    if code in _REASONS:
        return _REASONS[code]
    return f"NVML error: {err} (code {code})"


@dataclass
class _Gpu:
    """One GPU as enumerated: what NVML told about it, or why it could not."""

    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    error: str | None = None

    @property
    def id(self) -> str:
        return f"gpu-{self.index}"

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.index} (unreadable: {self.error})"
        return f"{self.index} {self.uuid} ({self.name})"


def _is_index(selector: str) -> bool:
    """An NVML index ("0", "12"), as opposed to a UUID."""
    sel = selector.strip()
    return sel.isascii() and sel.isdigit()


def _text(value: str | bytes) -> str:
    """pynvml before 11.515 returns bytes for names and UUIDs; later releases return str."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class NvmlProbe(Probe):
    """Every (selected) NVIDIA GPU, measured by its energy counter or its power draw.

    `devices` keeps GPUs by NVML index ("0") or UUID ("GPU-8a1b...", a unique prefix is
    enough, as CUDA allows). None means: the GPUs `CUDA_VISIBLE_DEVICES` names when it is set,
    else all. Indices are NVML (physical) indices, also those read from CUDA_VISIBLE_DEVICES;
    that matches CUDA's numbering with CUDA_DEVICE_ORDER=PCI_BUS_ID and on hosts whose GPUs are
    all the same model. UUIDs are unambiguous.

    `nvml` is the pynvml module to use (tests pass a fake); None imports pynvml.

    After construction: `uuids` maps device id to GPU UUID (also each Device's `uid`), `modes`
    maps device id to MODE_COUNTER or MODE_POWER, `skipped` maps the id of each selected GPU
    that cannot be read to the reason.
    """

    name = "nvml"

    def __init__(self, *, devices: Sequence[str] | None = None, nvml: Any = None,
                 devfs: Path | None = None) -> None:
        if nvml is None and "pynvml" not in sys.modules:  # loaded already: use it, as is
            if importlib.util.find_spec("pynvml") is None:
                raise ProbeUnavailable(NOT_INSTALLED)
            if devfs is not None and nvml_absent(devfs):
                raise ProbeUnavailable(NO_LIBRARY)
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as err:
                raise ProbeUnavailable(NOT_INSTALLED) from err
        self._nvml = nvml
        self._closed = False
        self.uuids: dict[str, str] = {}
        self.modes: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self._devices: tuple[Device, ...] = ()
        # (device, handle, uuid, True for the energy counter): all read() needs.
        self._active: list[tuple[Device, Any, str, bool]] = []

        try:
            nvml.nvmlInit()
        except nvml.NVMLError_LibraryNotFound as err:
            raise ProbeUnavailable(NO_LIBRARY) from err
        except nvml.NVMLError_DriverNotLoaded as err:
            raise ProbeUnavailable(NO_DRIVER) from err
        except nvml.NVMLError as err:
            raise ProbeUnavailable(f"NVML could not start: {describe_error(err)}") from err

        try:
            self._discover(devices)
        except BaseException:
            self.close()  # balance nvmlInit: NVML counts initialisations
            raise

    # -- discovery ------------------------------------------------------------------------

    def _discover(self, selectors: Sequence[str] | None) -> None:
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            raise ProbeUnavailable(f"NVML could not count GPUs: {describe_error(err)}") from err
        if count == 0:
            raise ProbeUnavailable("NVML found no GPU")
        gpus = [self._enumerate(i) for i in range(count)]
        try:  # part of each GPU's identity: a counter read under another driver is another
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        except (AttributeError, nvml.NVMLError):
            driver = "unknown"

        for gpu in self._select(gpus, selectors):
            if gpu.error is not None:
                self._skip(gpu, gpu.error)
                continue
            mode = self._detect_mode(gpu)
            if mode is None:
                continue
            device = Device(id=gpu.id, kind="gpu", source="nvml", name=gpu.name, uid=gpu.uuid,
                            identity=f"{gpu.uuid} driver {driver}",
                            max_power_w=self._max_power_w(gpu))
            self.uuids[device.id] = gpu.uuid
            self.modes[device.id] = mode
            self._active.append((device, gpu.handle, gpu.uuid, mode == MODE_COUNTER))

        if not self._active:
            reasons = "; ".join(f"{gid}: {why}" for gid, why in self.skipped.items())
            raise ProbeUnavailable(f"no selected GPU can be read: {reasons}")
        self._devices = tuple(entry[0] for entry in self._active)

    def _enumerate(self, index: int) -> _Gpu:
        """Handle, UUID and name of one GPU; a GPU NVML cannot open is kept with the reason."""
        nvml = self._nvml
        gpu = _Gpu(index)
        try:
            gpu.handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu.uuid = _text(nvml.nvmlDeviceGetUUID(gpu.handle))
            gpu.name = _text(nvml.nvmlDeviceGetName(gpu.handle))
        except nvml.NVMLError as err:
            gpu.error = describe_error(err)
        return gpu

    def _detect_mode(self, gpu: _Gpu) -> str | None:
        """MODE_COUNTER where the energy counter works, else MODE_POWER, else skip the GPU."""
        nvml = self._nvml
        unsupported = (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound)
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle)
            return MODE_COUNTER
        except unsupported:
            pass  # before Volta: fall back to power
        except nvml.NVMLError as err:
            self._skip(gpu, describe_error(err))
            return None
        try:
            nvml.nvmlDeviceGetPowerUsage(gpu.handle)
            return MODE_POWER
        except unsupported:
            self._skip(gpu, "NVML supports neither its energy counter nor its power usage")
        except nvml.NVMLError as err:
            self._skip(gpu, describe_error(err))
        return None

    def _max_power_w(self, gpu: _Gpu) -> float | None:
        """Twice the highest power limit the board allows, as the bound of what it can draw
        (a GPU may exceed its limit briefly, never twice over); None where NVML has none."""
        nvml = self._nvml
        try:
            _, top_mw = nvml.nvmlDeviceGetPowerManagementLimitConstraints(gpu.handle)
        except (AttributeError, nvml.NVMLError):
            return None
        return 2 * top_mw / 1000 if isinstance(top_mw, int) and top_mw > 0 else None

    def _skip(self, gpu: _Gpu, reason: str) -> None:
        who = f"{gpu.uuid} ({gpu.name})" if gpu.uuid else "(unreadable)"
        self.skipped[gpu.id] = f"{who}: {reason}"
        log.warning("nvml: skipping %s %s: %s", gpu.id, who, reason)

    # -- selection ------------------------------------------------------------------------

    def _select(self, gpus: list[_Gpu], selectors: Sequence[str] | None) -> list[_Gpu]:
        if isinstance(selectors, str):  # "0,2" from an environment variable or a YAML scalar
            selectors = selectors.split(",")
        if selectors is not None:
            return self._select_explicit(gpus, selectors)
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is None:
            return gpus
        return self._select_cuda(gpus, env)

    @staticmethod
    def _match(gpus: list[_Gpu], selector: str) -> list[_Gpu]:
        """GPUs a selector names: an NVML index, or a UUID or unique UUID prefix."""
        sel = selector.strip()
        if _is_index(sel):
            return [g for g in gpus if g.index == int(sel)]
        if sel.lower().startswith("gpu-"):
            return [g for g in gpus if g.uuid and g.uuid.lower().startswith(sel.lower())]
        return []

    def _select_explicit(self, gpus: list[_Gpu], selectors: Sequence[str]) -> list[_Gpu]:
        here = ", ".join(g.describe() for g in gpus)
        if not selectors:
            raise ProbeUnavailable(f"the GPU selection is an empty list; GPUs here: {here}")
        chosen: list[_Gpu] = []
        for sel in selectors:
            if str(sel).strip().upper().startswith("MIG-"):
                raise ProbeUnavailable(
                    f"GPU selector {sel!r} names a MIG instance: NVML measures power per physical"
                    f" GPU, so select its GPU by index or UUID; GPUs here: {here}"
                )
            found = self._match(gpus, str(sel))
            if not found:
                raise ProbeUnavailable(
                    f"GPU selector {sel!r} matches no GPU (select by NVML index or UUID);"
                    f" GPUs here: {here}"
                )
            if len(found) > 1:
                raise ProbeUnavailable(
                    f"GPU selector {sel!r} matches several GPUs: give more of the UUID;"
                    f" GPUs here: {here}"
                )
            if found[0] not in chosen:
                chosen.append(found[0])
        return chosen

    def _select_cuda(self, gpus: list[_Gpu], env: str) -> list[_Gpu]:
        """Apply CUDA_VISIBLE_DEVICES as CUDA does: entries up to the first invalid one count."""
        here = ", ".join(g.describe() for g in gpus)
        chosen: list[_Gpu] = []
        entries = [] if env.strip() in _HIDE_ALL else env.split(",")
        by_index = False
        for entry in entries:
            found = self._match(gpus, entry)
            if len(found) != 1:
                if entry.strip().upper().startswith("MIG-"):
                    raise ProbeUnavailable(
                        f"CUDA_VISIBLE_DEVICES={env!r} names MIG instances, which NVML cannot"
                        f" measure apart: select their GPU with the probe's devices setting;"
                        f" GPUs here: {here}"
                    )
                if chosen:
                    log.warning(
                        "nvml: CUDA_VISIBLE_DEVICES entry %r matches no single GPU; like CUDA,"
                        " ignoring it and every entry after it",
                        entry,
                    )
                break
            by_index = by_index or _is_index(entry)
            if found[0] not in chosen:
                chosen.append(found[0])
        if not chosen:
            raise ProbeUnavailable(
                f"CUDA_VISIBLE_DEVICES={env!r} hides every GPU: unset it or name GPUs by NVML"
                f" index or UUID; GPUs here: {here}"
            )
        models = {g.name for g in gpus if g.error is None}
        if by_index and len(models) > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
            log.warning(
                "nvml: CUDA_VISIBLE_DEVICES indices are read as NVML (PCI bus order) indices, but"
                " CUDA numbers mixed GPU models fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID:"
                " use UUIDs to be sure"
            )
        return chosen

    # -- the Probe interface --------------------------------------------------------------

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    @property
    def covers(self) -> frozenset[str]:
        return frozenset({"gpu"})

    def read(self) -> ProbeRead:
        """One NVML call per GPU; a GPU that fails is reported and the others still read."""
        nvml = self._nvml
        energy = nvml.nvmlDeviceGetTotalEnergyConsumption
        power = nvml.nvmlDeviceGetPowerUsage
        readings: list[Reading] = []
        errors: list[str] = []
        for device, handle, uuid, counter in self._active:
            try:
                if counter:
                    mj = _unsigned(energy(handle), 64, "total energy (mJ)")
                    readings.append(Reading(device, counter_uj=mj * 1000))
                else:
                    mw = _unsigned(power(handle), 32, "power usage (mW)")
                    readings.append(Reading(device, power_w=mw / 1000.0))
            except nvml.NVMLError as err:
                errors.append(f"{device.id} ({uuid}): {describe_error(err)}")
            except ValueError as err:
                errors.append(f"{device.id} ({uuid}): {err}")
        return ProbeRead(readings, errors)

    def close(self) -> None:
        """Shut NVML down once; errors are ignored (a lost GPU or driver must not block exit)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._nvml.nvmlShutdown()
        except Exception as err:  # closing must never raise
            log.debug("nvml: nvmlShutdown failed: %s", err)


@dataclass(frozen=True)
class GpuConfig:
    """Section `gpu`: the GPUs to measure, by NVML index or UUID; empty: every visible one."""

    devices: list[str]


def _make(settings: GpuConfig, ctx: ProbeContext) -> NvmlProbe:
    return NvmlProbe(devices=settings.devices or None, devfs=ctx.paths.devfs)


SPEC = ProbeSpec("nvml", order=40, make=_make, section="gpu", settings=GpuConfig)
