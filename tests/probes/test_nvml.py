"""The NVML probe against a fake NVML that raises the real pynvml exceptions.

Each test says which real NVML behaviour the fake reproduces for it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest

from carbonmeter.probes.base import ProbeUnavailable
from carbonmeter.probes.nvml import MODE_COUNTER, MODE_POWER, NO_DRIVER, NO_LIBRARY, NvmlProbe
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, load_from_env, write_state

ROOT = Path(__file__).resolve().parents[2]

UUID_A = "GPU-8a1b2c3d-0000-1111-2222-333344445555"
UUID_B = "GPU-8a9f0e1d-6666-7777-8888-999900001111"
UUID_C = "GPU-c0ffee00-aaaa-bbbb-cccc-ddddeeeeffff"


@pytest.fixture(autouse=True)
def _no_cuda_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake tests must not depend on the CUDA_VISIBLE_DEVICES of whoever runs them."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


def a100(uuid: str = UUID_A, power_mw: int = 250_000) -> FakeGpu:
    """Ampere: NVML offers the total-energy counter."""
    return FakeGpu("NVIDIA A100-SXM4-40GB", uuid, power_mw=power_mw, energy_counter=True)


def p100(uuid: str = UUID_B, power_mw: int = 120_000) -> FakeGpu:
    """Pascal: no energy counter (NotSupported), power usage only."""
    return FakeGpu("Tesla P100-PCIE-16GB", uuid, power_mw=power_mw, energy_counter=False)


def three() -> FakeNvml:
    return FakeNvml([a100(UUID_A), a100(UUID_B), a100(UUID_C)])


# -- the fake is faithful ------------------------------------------------------------------


def test_fake_raises_the_real_pynvml_classes() -> None:
    """Real: pynvml maps an NVML code to its generated subclass in NVMLError.__new__."""
    err = pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    assert type(err) is pynvml.NVMLError_GpuIsLost
    assert str(err) == "GPU is lost"
    fake = FakeNvml([a100()])
    assert fake.NVMLError is pynvml.NVMLError
    assert fake.NVMLError_NotSupported is pynvml.NVMLError_NotSupported
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    fake.gpus[0].lose()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        fake.nvmlDeviceGetPowerUsage(handle)


def test_fake_before_init_raises_uninitialized_like_real_pynvml() -> None:
    """Real: any device call before nvmlInit raises NVMLError_Uninitialized (checked on the
    real module here too, when no NVML library is loaded)."""
    fake = FakeNvml([a100()])
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlShutdown()
    if pynvml.nvmlLib is None:
        with pytest.raises(pynvml.NVMLError_Uninitialized):
            pynvml.nvmlDeviceGetCount()
    fake.nvmlInit()
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetHandleByIndex(0)


def test_fake_rejects_bad_index_and_foreign_handles() -> None:
    """Real: an index past the count, or a handle NVML did not issue, is InvalidArgument."""
    fake = FakeNvml([a100()])
    fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlDeviceGetPowerUsage(object())


# -- discovery and reading -----------------------------------------------------------------


def test_counter_gpu_and_power_gpu() -> None:
    """Real: Volta+ report mJ since driver load; older GPUs raise NotSupported for the counter
    but report power in mW."""
    fake = FakeNvml([a100(power_mw=250_000), p100(power_mw=120_000)])
    fake.gpus[0].advance(10)  # energy since the driver loaded
    probe = NvmlProbe(nvml=fake)

    assert probe.name == "nvml"
    assert probe.covers == frozenset({"gpu"})
    assert [d.id for d in probe.devices] == ["gpu-0", "gpu-1"]
    assert [d.name for d in probe.devices] == ["NVIDIA A100-SXM4-40GB", "Tesla P100-PCIE-16GB"]
    for device in probe.devices:
        assert (device.kind, device.source) == ("gpu", "nvml")
        assert device.wrap_uj is None
        assert device.estimated is False
    assert probe.modes == {"gpu-0": MODE_COUNTER, "gpu-1": MODE_POWER}
    assert probe.uuids == {"gpu-0": UUID_A, "gpu-1": UUID_B}
    assert probe.skipped == {}

    first = probe.read()
    assert first.errors == []
    counter, power = first.readings
    assert counter.device.id == "gpu-0"
    assert counter.counter_uj == fake.gpus[0].energy_mj * 1000 == 2_500_000 * 1000
    assert counter.power_w is None
    assert power.device.id == "gpu-1"
    assert power.power_w == pytest.approx(120.0)
    assert power.counter_uj is None

    fake.advance(2.5)
    fake.gpus[1].power_mw = 75_500
    counter, power = probe.read().readings
    assert counter.counter_uj == fake.gpus[0].energy_mj * 1000 == (2_500_000 + 625_000) * 1000
    assert power.power_w == pytest.approx(75.5)
    probe.close()


def test_counter_keeps_whole_millijoules() -> None:
    """Real: the counter is an integer of mJ, so fractions of a mJ do not show yet."""
    fake = FakeNvml([a100(power_mw=1)])
    probe = NvmlProbe(nvml=fake)
    fake.advance(0.5)  # 0.5 mJ
    assert probe.read().readings[0].counter_uj == 0
    fake.advance(0.5)
    assert probe.read().readings[0].counter_uj == 1000


def test_names_as_bytes_from_old_pynvml_are_decoded() -> None:
    """Real: pynvml before 11.515 returns bytes from nvmlDeviceGetName/GetUUID."""
    probe = NvmlProbe(nvml=FakeNvml([a100()], bytes_strings=True))
    assert probe.devices[0].name == "NVIDIA A100-SXM4-40GB"
    assert probe.uuids == {"gpu-0": UUID_A}


def test_lost_gpu_mid_run_is_one_error_line_and_the_other_still_reads() -> None:
    """Real: after an Xid 79 every call on that GPU returns NVML_ERROR_GPU_IS_LOST while the
    other GPUs keep answering."""
    fake = FakeNvml([a100(UUID_A), a100(UUID_B)])
    probe = NvmlProbe(nvml=fake)
    assert len(probe.read().readings) == 2
    fake.gpus[1].lose()
    fake.advance(1)
    result = probe.read()
    assert [r.device.id for r in result.readings] == ["gpu-0"]
    assert result.readings[0].counter_uj == fake.gpus[0].energy_mj * 1000
    assert len(result.errors) == 1
    assert result.errors[0].startswith(f"gpu-1 ({UUID_B}): GPU is lost (fell off the bus?)")
    assert "\n" not in result.errors[0]
    probe.close()


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("UNKNOWN", "NVML unknown error"),
        ("NOT_SUPPORTED", "Not Supported"),
        ("RESET_REQUIRED", "requires a reset"),
        ("CORRUPTED_INFOROM", "Corrupted infoROM"),
    ],
)
def test_other_nvml_errors_during_read(code: str, expected: str) -> None:
    """Real: NVML can return Unknown, NotSupported, ResetRequired... for one GPU mid-run."""
    fake = FakeNvml([p100(UUID_A), a100(UUID_B)])
    probe = NvmlProbe(nvml=fake)
    fake.gpus[0].fail(code)
    result = probe.read()
    assert [r.device.id for r in result.readings] == ["gpu-1"]
    assert len(result.errors) == 1
    assert result.errors[0].startswith(f"gpu-0 ({UUID_A}): ")
    assert expected in result.errors[0]


def test_nvml_initialised_once_and_handles_looked_up_once() -> None:
    """Real: nvmlInit is costly (it opens every device); handles stay valid until shutdown."""
    fake = FakeNvml([a100(UUID_A), p100(UUID_B)])
    probe = NvmlProbe(nvml=fake)
    discovery = fake.calls.copy()
    for _ in range(5):
        probe.read()
    assert fake.calls["nvmlInit"] == 1
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 2
    assert fake.calls["nvmlDeviceGetCount"] == discovery["nvmlDeviceGetCount"] == 1
    assert fake.calls["nvmlDeviceGetUUID"] == discovery["nvmlDeviceGetUUID"]
    energy = "nvmlDeviceGetTotalEnergyConsumption"
    assert fake.calls[energy] - discovery[energy] == 5  # only gpu-0, once per read
    assert fake.calls["nvmlDeviceGetPowerUsage"] - discovery["nvmlDeviceGetPowerUsage"] == 5


def test_close_shuts_nvml_down_once_and_ignores_errors() -> None:
    """Real: nvmlInit/nvmlShutdown are reference counted; a surplus shutdown is an error."""
    fake = FakeNvml([a100()])
    probe = NvmlProbe(nvml=fake)
    assert fake.refcount == 1
    probe.close()
    assert fake.refcount == 0
    probe.close()
    assert fake.calls["nvmlShutdown"] == 1
    other = NvmlProbe(nvml=FakeNvml([a100()]))
    other._nvml.nvmlShutdown()  # someone else shut NVML down: close must not raise
    other.close()


def test_gpu_with_neither_counter_nor_power_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    """Real: some boards (GeForce before Volta, some vGPU profiles) support neither."""
    silent = FakeGpu("GeForce GTX 1080", UUID_B, energy_counter=False, power_supported=False)
    fake = FakeNvml([a100(UUID_A), silent])
    with caplog.at_level(logging.WARNING, logger="carbonmeter.probes.nvml"):
        probe = NvmlProbe(nvml=fake)
    assert [d.id for d in probe.devices] == ["gpu-0"]
    assert list(probe.skipped) == ["gpu-1"]
    assert UUID_B in probe.skipped["gpu-1"]
    assert "neither its energy counter nor its power usage" in probe.skipped["gpu-1"]
    assert "gpu-1" not in probe.modes
    assert "skipping gpu-1" in caplog.text
    assert [r.device.id for r in probe.read().readings] == ["gpu-0"]


def test_gpu_without_permission_is_skipped() -> None:
    """Real: nvmlDeviceGetHandleByIndex returns NO_PERMISSION for a /dev/nvidiaN the user
    cannot open, while nvmlDeviceGetCount still counts it."""
    locked = FakeGpu("NVIDIA A100-SXM4-40GB", UUID_B, permitted=False)
    probe = NvmlProbe(nvml=FakeNvml([a100(UUID_A), locked]))
    assert [d.id for d in probe.devices] == ["gpu-0"]
    assert "insufficient permissions" in probe.skipped["gpu-1"]


def test_no_readable_gpu_is_unavailable_and_shuts_down() -> None:
    """Real: NVML initialised fine, but no GPU yields a number."""
    silent = FakeGpu("GeForce GTX 1080", UUID_A, energy_counter=False, power_supported=False)
    fake = FakeNvml([silent])
    with pytest.raises(ProbeUnavailable, match="no selected GPU can be read: gpu-0"):
        NvmlProbe(nvml=fake)
    assert fake.refcount == 0


def test_zero_gpus() -> None:
    """Real: with the driver loaded but every GPU unbound, nvmlDeviceGetCount returns 0."""
    fake = FakeNvml([])
    with pytest.raises(ProbeUnavailable, match=r"^NVML found no GPU$"):
        NvmlProbe(nvml=fake)
    assert fake.refcount == 0


# -- NVML or pynvml missing ----------------------------------------------------------------


def test_library_missing_is_one_actionable_line() -> None:
    """Real: pynvml's nvmlInit raises NVMLError_LibraryNotFound when dlopen of
    libnvidia-ml.so.1 fails (no driver, or a container without the NVIDIA runtime)."""
    fake = FakeNvml([a100()], init_error="LIBRARY_NOT_FOUND")
    with pytest.raises(ProbeUnavailable) as info:
        NvmlProbe(nvml=fake)
    assert str(info.value) == NO_LIBRARY
    assert "libnvidia-ml.so.1" in NO_LIBRARY and "\n" not in NO_LIBRARY


def test_driver_not_loaded() -> None:
    """Real: the library is installed but the kernel module is not loaded."""
    with pytest.raises(ProbeUnavailable) as info:
        NvmlProbe(nvml=FakeNvml([a100()], init_error="DRIVER_NOT_LOADED"))
    assert str(info.value) == NO_DRIVER


def test_driver_library_mismatch() -> None:
    """Real: after a driver upgrade without reboot nvmlInit returns LIB_RM_VERSION_MISMATCH."""
    with pytest.raises(ProbeUnavailable, match="versions differ"):
        NvmlProbe(nvml=FakeNvml([a100()], init_error="LIB_RM_VERSION_MISMATCH"))


def test_pynvml_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: without nvidia-ml-py, `import pynvml` raises ImportError."""
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    with pytest.raises(ProbeUnavailable, match=r"^pynvml not installed: pip install nvidia-ml-py"):
        NvmlProbe()


def _real_nvml_loadable() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_real_nvml_loadable(), reason="this host has libnvidia-ml.so.1")
def test_real_pynvml_without_driver_says_library_not_found() -> None:
    """The real pynvml on a host without an NVIDIA driver: one line, not a traceback."""
    with pytest.raises(ProbeUnavailable) as info:
        NvmlProbe()
    assert str(info.value) == NO_LIBRARY


@pytest.mark.skipif(not _real_nvml_loadable(), reason="no libnvidia-ml.so.1 on this host")
def test_real_gpus_when_present() -> None:
    """On a GPU host: every visible GPU reads, counters do not go backwards."""
    try:
        probe = NvmlProbe()
    except ProbeUnavailable as err:
        pytest.skip(f"NVML present but unusable: {err}")
    try:
        first = probe.read()
        time.sleep(0.2)
        second = probe.read()
        assert first.errors == second.errors == []
        assert len(second.readings) == len(probe.devices) >= 1
        for a, b in zip(first.readings, second.readings, strict=True):
            if a.counter_uj is not None:
                assert b.counter_uj is not None and b.counter_uj >= a.counter_uj
            else:
                assert b.power_w is not None and b.power_w >= 0
        assert all(u.startswith(("GPU-", "MIG-")) for u in probe.uuids.values())
    finally:
        probe.close()


def test_importing_the_probe_does_not_import_pynvml() -> None:
    """Start-up: `import probes.nvml` stays cheap on hosts without GPUs."""
    code = "import sys, probes.nvml; assert 'pynvml' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


# -- selection -----------------------------------------------------------------------------


def test_select_by_index_keeps_physical_index() -> None:
    """Real: NVML indices are physical (PCI bus order), whatever CUDA numbers them."""
    probe = NvmlProbe(devices=["2", "0"], nvml=three())
    assert [d.id for d in probe.devices] == ["gpu-2", "gpu-0"]
    assert probe.uuids == {"gpu-2": UUID_C, "gpu-0": UUID_A}


def test_select_from_a_comma_separated_string_or_yaml_integers() -> None:
    """Configuration may say `devices: "0,2"` or `devices: [0, 2]` (YAML integers)."""
    assert [d.id for d in NvmlProbe(devices="0,2", nvml=three()).devices] == ["gpu-0", "gpu-2"]
    ints: list = [0, 2]
    assert [d.id for d in NvmlProbe(devices=ints, nvml=three()).devices] == ["gpu-0", "gpu-2"]


def test_select_by_uuid_and_prefix() -> None:
    """Real: CUDA accepts a GPU UUID or a unique prefix of it."""
    assert [d.id for d in NvmlProbe(devices=[UUID_B], nvml=three()).devices] == ["gpu-1"]
    assert [d.id for d in NvmlProbe(devices=["gpu-c0ff"], nvml=three()).devices] == ["gpu-2"]
    with pytest.raises(ProbeUnavailable, match="'GPU-8a' matches several GPUs"):
        NvmlProbe(devices=["GPU-8a"], nvml=three())


def test_selector_matching_nothing_names_it_and_lists_the_gpus() -> None:
    """Real: nvmlDeviceGetCount bounds the indices; UUIDs are what nvidia-smi -L prints."""
    fake = three()
    with pytest.raises(ProbeUnavailable) as info:
        NvmlProbe(devices=["0", "7"], nvml=fake)
    message = str(info.value)
    assert "'7' matches no GPU" in message
    assert f"0 {UUID_A} (NVIDIA A100-SXM4-40GB)" in message
    assert UUID_B in message and UUID_C in message
    assert "\n" not in message
    assert fake.refcount == 0  # nvmlInit balanced by nvmlShutdown
    with pytest.raises(ProbeUnavailable, match="'GPU-ffff' matches no GPU"):
        NvmlProbe(devices=["GPU-ffff"], nvml=three())
    with pytest.raises(ProbeUnavailable, match="empty list"):
        NvmlProbe(devices=[], nvml=three())
    with pytest.raises(ProbeUnavailable, match="MIG instance"):
        NvmlProbe(devices=["MIG-1234"], nvml=three())


def test_cuda_visible_devices_selects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: CUDA_VISIBLE_DEVICES takes indices or UUIDs, comma-separated."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    probe = NvmlProbe(nvml=three())
    assert [d.id for d in probe.devices] == ["gpu-2"]  # CUDA calls it device 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{UUID_B}, 0")
    assert [d.id for d in NvmlProbe(nvml=three()).devices] == ["gpu-1", "gpu-0"]


def test_explicit_devices_override_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configuration wins over the environment the exporter happens to inherit."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert [d.id for d in NvmlProbe(devices=["1"], nvml=three()).devices] == ["gpu-1"]


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles", "7"])
def test_cuda_visible_devices_hiding_every_gpu(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Real: CUDA sees no device when the first entry is empty, -1 or invalid (Slurm and Grid
    Engine set NoDevFiles for jobs without GPUs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    fake = three()
    with pytest.raises(ProbeUnavailable) as info:
        NvmlProbe(nvml=fake)
    assert f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU" in str(info.value)
    assert UUID_A in str(info.value)
    assert fake.refcount == 0


def test_cuda_visible_devices_stops_at_first_invalid_entry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Real (CUDA documentation): with 0,2,-1,1 only devices 0 and 2 are visible."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2,-1,1")
    with caplog.at_level(logging.WARNING, logger="carbonmeter.probes.nvml"):
        probe = NvmlProbe(nvml=three())
    assert [d.id for d in probe.devices] == ["gpu-0", "gpu-2"]
    assert "'-1'" in caplog.text


def test_cuda_visible_devices_with_mig_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: on MIG-partitioned GPUs CUDA_VISIBLE_DEVICES holds MIG-<uuid> entries."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-5c1e2b7a-aaaa-bbbb-cccc-000011112222")
    with pytest.raises(ProbeUnavailable, match="names MIG instances"):
        NvmlProbe(nvml=three())


def test_cuda_indices_on_mixed_models_warn(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Real: CUDA orders mixed models fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with caplog.at_level(logging.WARNING, logger="carbonmeter.probes.nvml"):
        NvmlProbe(nvml=FakeNvml([a100(UUID_A), p100(UUID_B)]))
    assert "CUDA_DEVICE_ORDER=PCI_BUS_ID" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    with caplog.at_level(logging.WARNING, logger="carbonmeter.probes.nvml"):
        NvmlProbe(nvml=FakeNvml([a100(UUID_A), p100(UUID_B)]))
    assert caplog.text == ""


# -- the out-of-process fake ---------------------------------------------------------------


def test_state_file_fake_follows_the_clock_and_the_file(tmp_path: Path) -> None:
    """Out of process: energy = power × time since start; the file can change power or lose a
    GPU mid-run, as the end-to-end test will do to a `carbonmeter serve` child."""
    now = [1000.0]
    path = write_state(
        tmp_path / "nvml.json",
        [a100(UUID_A, power_mw=200_000), p100(UUID_B, power_mw=50_000)],
        start_monotonic=990.0,
    )
    fake = load_from_env({"FAKE_NVML_STATE": str(path)}, clock=lambda: now[0])
    probe = NvmlProbe(nvml=fake)
    counter, power = probe.read().readings
    assert counter.counter_uj == 200_000 * 10 * 1000  # 10 s at 200 W
    assert power.power_w == pytest.approx(50.0)

    now[0] += 5
    state = json.loads(path.read_text())
    state["gpus"][0]["power_mw"] = 100_000
    state["gpus"][1]["error"] = "GPU_IS_LOST"
    path.write_text(json.dumps(state))
    result = probe.read()
    assert result.readings[0].counter_uj == 200_000 * 15 * 1000  # the 5 s ran at 200 W
    assert result.errors == [
        f"gpu-1 ({UUID_B}): GPU is lost (fell off the bus?): see Xid errors in dmesg; it needs a "
        "reset or the host a reboot"
    ]
    now[0] += 1
    assert probe.read().readings[0].counter_uj == (200_000 * 15 + 100_000) * 1000


def test_state_file_fake_in_a_child_process(tmp_path: Path) -> None:
    """Out of process, as `carbonmeter serve` will run it: install_from_env replaces pynvml."""
    path = write_state(
        tmp_path / "nvml.json", [a100(UUID_A, power_mw=300_000)], start_monotonic=time.monotonic()
    )
    code = (
        "import json\n"
        "from tests.fakes.fake_nvml import install_from_env\n"
        "install_from_env()\n"
        "from carbonmeter.probes.nvml import NvmlProbe\n"
        "p = NvmlProbe()\n"
        "r = p.read()\n"
        "print(json.dumps([p.modes, p.uuids, r.readings[0].counter_uj, r.errors]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAKE_NVML_STATE": str(path)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    modes, uuids, counter_uj, errors = json.loads(out.stdout)
    assert modes == {"gpu-0": MODE_COUNTER}
    assert uuids == {"gpu-0": UUID_A}
    assert errors == []
    assert counter_uj > 0  # 300 W since the parent wrote the file

    write_state(tmp_path / "nvml.json", [a100()], init_error="LIBRARY_NOT_FOUND")
    code = (
        "from tests.fakes.fake_nvml import install_from_env\n"
        "install_from_env()\n"
        "from carbonmeter.probes.base import ProbeUnavailable\n"
        "from carbonmeter.probes.nvml import NvmlProbe\n"
        "try:\n    NvmlProbe()\nexcept ProbeUnavailable as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == NO_LIBRARY


def test_a_host_without_nvidia_driver_or_library_does_not_load_nvml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real: without /dev/nvidiactl and libnvidia-ml.so.1, nvmlInit can only fail with
    LibraryNotFound, after an import of pynvml that costs tens of milliseconds. Either one
    present, NVML is tried (it creates missing nodes itself, through nvidia-modprobe)."""
    from carbonmeter.probes import nvml

    dev, lib, cache = tmp_path / "dev", tmp_path / "lib", tmp_path / "ld.so.cache"
    dev.mkdir()
    lib.mkdir()
    cache.write_bytes(b"glibc-ld.so.cache1.1\0libc.so.6\0/lib/x86_64-linux-gnu/libc.so.6\0")
    monkeypatch.setattr(nvml, "_LIB_DIRS", ())
    monkeypatch.setenv("LD_LIBRARY_PATH", str(lib))
    assert nvml.nvml_absent(dev, ld_cache=cache)
    assert nvml.nvml_absent(dev, ld_cache=tmp_path / "no-cache")
    (lib / "libnvidia-ml.so.1").touch()
    assert not nvml.nvml_absent(dev, ld_cache=cache)
    (lib / "libnvidia-ml.so.1").unlink()
    cache.write_bytes(cache.read_bytes() + b"libnvidia-ml.so.1\0/usr/lib/libnvidia-ml.so.1\0")
    assert not nvml.nvml_absent(dev, ld_cache=cache)
    (dev / "nvidiactl").touch()
    assert not nvml.nvml_absent(dev, ld_cache=tmp_path / "no-cache")

    # through the probe: pynvml is not imported when NVML cannot be there
    monkeypatch.setattr(nvml, "nvml_absent", lambda devfs: True)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    with pytest.raises(ProbeUnavailable) as info:
        NvmlProbe(devfs=dev)
    assert str(info.value) == NO_LIBRARY and "pynvml" not in sys.modules
    fake = FakeNvml([a100()])  # a binding the program loaded itself is used as it is
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert NvmlProbe(devfs=dev).devices[0].kind == "gpu"
