"""Which processes used each NVIDIA GPU over an interval, and how much, from NVML.

Best first, per GPU:

- ``nvmlDeviceGetProcessUtilization(handle, lastSeenTimeStamp)``: the driver's samples of
  each process's SM utilisation since the last call; a process's weight is the sum of its
  samples. NVML answers NOT_FOUND when it has no sample since that time (an idle GPU) and
  NOT_SUPPORTED on GPUs without per-process accounting;
- ``nvmlDeviceGetComputeRunningProcesses``: the processes holding a context on the GPU,
  weighted by the memory each holds (equally where NVML cannot say). One holder, or holders all
  in one container, get the GPU whole.

PIDs are those of the host's PID namespace, as NVML reports them.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger(__name__)


class GpuProcesses:
    """Per-process weights of GPUs by NVML index; `nvml` is the pynvml module (tests: a fake)."""

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            nvml = importlib.import_module("pynvml")
        self._nvml = nvml
        nvml.nvmlInit()
        self._handles: dict[int, Any] = {}
        self._last: dict[int, int] = {}  # index -> last sample timestamp seen (µs)
        self._no_util: set[int] = set()
        self._error: dict[int, str] = {}

    def weights(self, index: int) -> dict[int, float]:
        """PID -> weight on GPU `index` over the interval; empty when no process used it."""
        nvml = self._nvml
        try:
            handle = self._handles.get(index)
            if handle is None:
                handle = self._handles[index] = nvml.nvmlDeviceGetHandleByIndex(index)
            if index not in self._no_util:
                found = self._utilisation(index, handle)
                if found:
                    return found
            procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except nvml.NVMLError as e:
            self._handles.pop(index, None)
            why = str(e)
            if self._error.get(index) != why:
                log.warning("gpu-%d: cannot list its processes (%s); its dynamic energy is "
                            "unattributed", index, why)
            self._error[index] = why
            return {}
        self._error.pop(index, None)
        used = {p.pid: float(p.usedGpuMemory or 0) for p in procs}
        if used and not any(used.values()):  # memory unknown (NVML_VALUE_NOT_AVAILABLE)
            used = dict.fromkeys(used, 1.0)
        return used

    def _utilisation(self, index: int, handle: Any) -> dict[int, float]:
        nvml = self._nvml
        try:
            samples = nvml.nvmlDeviceGetProcessUtilization(handle, self._last.get(index, 0))
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound):
            self._no_util.add(index)
            log.info("gpu-%d: no per-process utilisation in NVML; sharing it by the memory "
                     "its processes hold", index)
            return {}
        except nvml.NVMLError_NotFound:  # no sample since the last call
            return {}
        out: dict[int, float] = {}
        last = since = self._last.get(index, 0)
        for s in samples:
            if s.timeStamp <= since:
                continue
            last = max(last, s.timeStamp)
            if s.smUtil:
                out[s.pid] = out.get(s.pid, 0.0) + s.smUtil
        self._last[index] = last
        return out

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception as e:  # closing must never raise
            log.debug("nvml: nvmlShutdown failed: %s", e)
