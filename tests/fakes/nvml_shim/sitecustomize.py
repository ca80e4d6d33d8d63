"""Put on a child process's PYTHONPATH to make `import pynvml` load the fake NVML.

Active only when FAKE_NVML_STATE names a state file (see tests/fakes/fake_nvml.py).
"""

import os

if os.environ.get("FAKE_NVML_STATE"):
    from tests.fakes.fake_nvml import install_from_env

    install_from_env()
