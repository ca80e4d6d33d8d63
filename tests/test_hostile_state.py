"""State files that cannot be trusted, and state paths that are not files.

`carbonmeter serve` runs as a real process on a powercap fixture. Whatever the file holds
(numbers too large for a float, brackets nested 100,000 deep, another machine's totals), the
exporter sets it aside with the reason and starts from zero; a path naming a device or a
FIFO is a configuration error (exit 2, one line), never read, never replaced; and one file
belongs to one exporter: a second one refuses to start, naming the file and the holder's
PID, and the first one's totals are untouched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonmeter import state
from carbonmeter.state import Store
from tests.carbon.test_live_intensity import sample_value
from tests.fixtures.powercap import one_socket
from tests.helpers import free_port, http_get, wait_for
from tests.test_end_to_end import metrics, start_serve, stop

PKG = 'carbonmeter_energy_joules_total{device="package-0",kind="cpu",source="rapl"}'
DEVICE = {
    "id": "package-0", "kind": "cpu", "source": "rapl", "name": "Xeon", "estimated": False,
    "wrap_uj": 262143328911.04, "identity": "intel-rapl:0", "max_power_w": None,
    "mean_power": False, "energy_j": 1234.5, "emissions_g": 0.25, "unmeasured_s": 3.0,
    "counter_uj": 99_000_000, "t": 100.0, "wall": 1.7e9,
}


def doc(**changes) -> dict:
    return {"version": 1, "written_unix": 1.7e9, "boot_id": "b", "devices": [DEVICE],
            **changes}


def config(tmp: Path, state_path: Path, monkeypatch) -> str:
    """A configuration on a fixture package, with `state_path` as state.path (set by the
    environment too, which tests/conftest.py points at a file of each test's own)."""
    one_socket(tmp / "sys")
    monkeypatch.setenv("CARBONMETER_STATE_PATH", str(state_path))
    return (f"paths: {{sysfs: {tmp / 'sys'}}}\n"
            "probes: {disabled: [nvml, cpu_model, ram_model]}\n"
            f"state: {{path: '{state_path}', checkpoint_seconds: 0.2}}\n")


def serve_once(tmp: Path, text: str, timeout: float = 20) -> subprocess.CompletedProcess:
    """`carbonmeter serve` expected to stop by itself: its exit status and output."""
    cfg = tmp / "carbonmeter.yaml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "carbonmeter", "serve", "--config", str(cfg),
                           "--listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True,
                          timeout=timeout)


# -- values no checkpoint could hold -------------------------------------------------------------


@pytest.mark.parametrize(("content", "reason"), [
    (json.dumps(doc(written_unix=10**400)).encode(), "written_unix"),
    (json.dumps(doc(embodied={"host": 10**400})).encode(), "embodied.host is not a number"),
    (json.dumps(doc(devices=[{**DEVICE, "energy_j": 10**400}])).encode(),
     "devices[0].energy_j is not a number from 0 to 1e+15"),
    (json.dumps(doc(devices=[{**DEVICE, "energy_j": 1e300}])).encode(),
     "devices[0].energy_j is not a number from 0 to 1e+15"),
    (json.dumps(doc(devices=[{**DEVICE, "counter_uj": 2**200}])).encode(), "counter_uj"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (json.dumps(doc(x=[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]])).encode(), "nested more than 16"),
    (b"1" * 5000, "not JSON"),  # more digits than Python turns into an int
])
def test_values_out_of_range_set_the_file_aside(tmp_path, caplog, content, reason):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    store = Store.open(str(path))
    assert store.load() is None
    (aside,) = tmp_path.glob("state.json.rejected-*")
    assert aside.read_bytes() == content
    assert reason in caplog.text and "starting from zero" in caplog.text
    assert len(caplog.text) < 2000  # the value is shown cut short, not in full


def test_serve_sets_a_huge_number_aside_and_starts(tmp_path, monkeypatch):
    """Before: a traceback and exit 1 at start (a supervisor restarting it forever) for
    written_unix, and for energy_j a dead sampler, 500 on every scrape and the bad value
    checkpointed again."""
    path = tmp_path / "state" / "state.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc(written_unix=10**400,
                                   devices=[{**DEVICE, "energy_j": 10**400}])))
    proc, target = start_serve(tmp_path, config(tmp_path, path, monkeypatch))
    try:
        wait_for(lambda: sample_value(metrics(target), PKG) is not None, what="a sample")
        assert http_get(f"http://{target}/healthz")[0] == 200
        wait_for(path.exists, what="a checkpoint of its own")
    finally:
        assert stop(proc) == 0
    log = (tmp_path / "serve.log").read_text()
    assert "is unusable" in log and "Traceback" not in log
    assert len(list(path.parent.glob("state.json.rejected-*"))) == 1
    assert state.parse(path.read_bytes()).devices[0]["energy_j"] < 1e6


# -- another machine's file ----------------------------------------------------------------------


def test_a_file_from_another_machine_is_set_aside_not_adopted(tmp_path, caplog):
    """Before: a file copied from another host (its 4 GPUs' 20 MJ) was added to this host's
    totals. The machine id written with every checkpoint must be this one's."""
    path = tmp_path / "state.json"
    gpus = [{**DEVICE, "id": f"gpu-{i}", "kind": "gpu", "source": "nvml", "energy_j": 5e6}
            for i in range(4)]
    other = "0f3b9a6c1d2e4f5a8b7c6d5e4f3a2b1c"
    path.write_text(json.dumps(doc(devices=gpus, machine_id=other)))
    store = Store.open(str(path), machine="3d1219c7c4c5404aaa1f6d2a48adfda4")
    assert store.load() is None
    assert f"written on another machine (machine id {other}" in caplog.text
    assert store.save("b", {"devices": [DEVICE]})
    assert store.load().machine_id == "3d1219c7c4c5404aaa1f6d2a48adfda4"


def test_serve_writes_and_checks_this_hosts_machine_id(tmp_path, monkeypatch):
    here = state.machine_id()
    if not here:
        pytest.skip("this host has no /etc/machine-id")
    path = tmp_path / "state.json"
    path.write_text(json.dumps(doc(machine_id="0" * 32)))
    proc, target = start_serve(tmp_path, config(tmp_path, path, monkeypatch))
    try:
        wait_for(lambda: sample_value(metrics(target), PKG) is not None, what="a sample")
        assert sample_value(metrics(target), PKG) < 1234.5  # not continued from the file
    finally:
        assert stop(proc) == 0
    assert f"machine id {'0' * 32}; this one is {here}" in (tmp_path / "serve.log").read_text()
    assert json.loads(path.read_text())["machine_id"] == here


# -- one file, one exporter ----------------------------------------------------------------------


def test_a_second_exporter_on_the_same_file_refuses_to_start(tmp_path, monkeypatch):
    """Before: two exporters on one state file overwrote each other (a counter went from
    320 J back to 120 J)."""
    path = tmp_path / "state.json"
    text = config(tmp_path, path, monkeypatch)
    first, target = start_serve(tmp_path, text)
    try:
        wait_for(lambda: sample_value(metrics(target), PKG) is not None, what="a sample")
        wait_for(path.exists, what="a checkpoint")
        second = serve_once(tmp_path / "sys", text)
        assert second.returncode == 1
        lines = [ln for ln in second.stderr.splitlines() if "ERROR" in ln]
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"{path} is in use by another carbonmeter exporter (PID {first.pid})" in lines[0]
        assert "give each exporter its own state.path" in lines[0]
        before = state.parse(path.read_bytes())
        time.sleep(0.6)
        assert first.poll() is None
        after = state.parse(path.read_bytes())
        assert after.written_unix > before.written_unix  # the first one still checkpoints
    finally:
        assert stop(first) == 0


def test_one_file_one_store_until_it_is_closed(tmp_path):
    """flock belongs to an open file: a second Store on the same file refuses even in the
    same process, until the first is closed (the checkpointer closes it after the last
    checkpoint)."""
    path = tmp_path / "state.json"
    first = Store.open(str(path))
    with pytest.raises(state.StateRefused, match=f"PID {os.getpid()}"):
        Store.open(str(path))
    first.close()
    assert Store.open(str(path)) is not None


def test_the_lock_is_released_when_the_holder_dies(tmp_path):
    """A SIGKILLed exporter holds nothing: flock ends with the process."""
    path = tmp_path / "state.json"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import sys, time
from carbonmeter.state import Store
Store.open({str(path)!r})
print("locked", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(state.StateRefused, match=f"PID {holder.pid}"):
            Store.open(str(path))
    finally:
        holder.kill()
        holder.wait(10)
    assert Store.open(str(path)) is not None


# -- paths that are not files --------------------------------------------------------------------


def test_a_character_device_as_state_path_is_refused_untouched(tmp_path, monkeypatch):
    """Before: state.path naming a device node was renamed away and replaced by a file."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    done = serve_once(tmp_path, config(tmp_path, node, monkeypatch))
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("carbonmeter: configuration error: ")
    assert f"state.path: {node} is not a regular file (a character device)" in line
    assert stat.S_ISCHR(node.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carbonmeter.yaml", "null", "sys"]


def test_a_fifo_as_state_path_neither_blocks_start_nor_stop(tmp_path, monkeypatch):
    """Before: a FIFO blocked start-up, and SIGTERM with it."""
    fifo = tmp_path / "state.fifo"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    done = serve_once(tmp_path, config(tmp_path, fifo, monkeypatch), timeout=20)
    assert done.returncode == 2 and time.monotonic() - t0 < 15
    assert "is not a regular file (a FIFO)" in done.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


def test_a_fifo_swapped_in_after_the_check_is_not_read(tmp_path, caplog):
    """Between the check at start and the read, the path may change: the read opens
    without blocking and reads only a regular file."""
    fifo = tmp_path / "state.json"
    store = Store.open(str(fifo))
    os.mkfifo(fifo)
    t0 = time.monotonic()
    assert store.load() is None
    assert time.monotonic() - t0 < 1 and "not a regular file (a FIFO)" in caplog.text
