"""On a benchmark child's PYTHONPATH: `import pynvml` returns an in-memory fake with 4 GPUs.

Unlike the tests' file-driven fake, this one reads no file per call, so what the benchmark
measures is carbonmeter's own cost (a real NVML call costs tens of microseconds, of the same
order as this fake's Python call).
"""

import sys
import time

from tests.fakes.fake_nvml import FakeGpu, FakeNvml

sys.modules["pynvml"] = FakeNvml(
    [FakeGpu(f"NVIDIA H100 80GB HBM3 #{i}", f"GPU-bench-{i}", power_mw=300_000 + 10_000 * i,
             energy_counter=i % 2 == 0) for i in range(4)],
    clock=time.monotonic,
)
