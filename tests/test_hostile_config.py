"""Configuration, flags and environment that cannot work: one line and exit 2, before
anything starts, never a traceback.

Each case runs the real command (`carbonmeter config check` and `carbonmeter serve`): NUL
bytes and names too long for the filesystem in path keys, hosts that no resolver takes,
and devices or FIFOs given where a file is read (read with a byte limit and only if
regular, so /dev/zero is refused at once rather than read until memory runs out). Then a
writer thread whose file goes away while the exporter runs: it says so, and the shutdown
still writes the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonmeter import state
from tests.fixtures.powercap import one_socket
from tests.helpers import free_port, wait_for

PATH_KEYS = [
    ("paths", "sysfs"), ("paths", "procfs"), ("state", "path"), ("server", "web_config_file"),
    ("emissions_log", "path"), ("redfish", "password_file"), ("redfish", "ca_file"),
    ("attribution", "cgroupfs"), ("powergadget", "log"),
]
LONG = "/tmp/" + "n" * 5000  # longer than a path may be (4,095 bytes)
LONG_NAME = "/tmp/" + "n" * 300  # one name longer than a name may be (255 bytes)


def carbonmeter(*argv: str, env: dict[str, str] | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbonmeter", *argv], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def refused(out: subprocess.CompletedProcess, *expected: str) -> str:
    """The one line of a configuration error; exit status 2."""
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert lines[0].startswith("carbonmeter: configuration error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def yaml_value(text: str) -> str:
    return json.dumps(text)  # a double-quoted YAML scalar: \u0000 is a NUL byte


@pytest.mark.parametrize(("section", "key"), PATH_KEYS)
@pytest.mark.parametrize("value", ["/tmp/a\0b", LONG, LONG_NAME],
                         ids=["nul", "5000 characters", "a 300-character name"])
def test_path_keys_with_a_nul_byte_or_an_over_long_name(tmp_path, monkeypatch, section, key,
                                                        value):
    monkeypatch.delenv("CARBONMETER_STATE_PATH")  # tests/conftest.py's, over the file's
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{section}:\n  {key}: {yaml_value(value)}\n")
    why = {LONG: "a path of 5005 bytes; at most 4095",
           LONG_NAME: "a name of 300 bytes"}.get(value, "contains a NUL byte")
    refused(carbonmeter("config", "check", str(cfg)), f"{cfg}: {section}.{key}: ", why)


def test_a_provider_secret_file_with_a_nul_byte(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("carbon:\n  providers:\n    - type: electricitymaps\n      zone: DE\n"
                   f"      secret_file: {yaml_value('/run/secrets/t' + chr(0))}\n")
    refused(carbonmeter("config", "check", str(cfg)),
            "carbon.providers[0].secret_file: ", "NUL byte")


def test_serve_refuses_before_anything_starts(tmp_path):
    """emissions_log.path with a NUL byte: before, the writer thread died and the final
    checkpoint was lost; now serve never starts."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"emissions_log:\n  path: {yaml_value('/tmp/log' + chr(0) + '.csv')}\n")
    refused(carbonmeter("serve", "--config", str(cfg), "--listen",
                        f"127.0.0.1:{free_port()}"), "emissions_log.path: ", "NUL byte")


@pytest.mark.parametrize("listen", ["ünïcode.example:29100", "[::zz]:29100", "a b:29100",
                                    "-bad-.example:29100", "x" * 300 + ":29100"])
def test_listen_hosts_no_resolver_takes(tmp_path, listen):
    (tmp_path / "c.yaml").write_text("")
    out = carbonmeter("serve", f"--listen={listen}", "--config", str(tmp_path / "c.yaml"))
    refused(out, "server.listen: ", "the host must be an IP address or an ASCII host name")


def test_a_nul_in_the_listen_host_from_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"server:\n  listen: {yaml_value('127.0.0.1' + chr(0) + ':29100')}\n")
    refused(carbonmeter("config", "check", str(cfg)), "server.listen: ", "NUL byte")


def test_hosts_that_are_fine(tmp_path):
    (tmp_path / "c.yaml").write_text("")
    for listen in ("127.0.0.1:0", "[::1]:0", "localhost:0", ":0", "node-7.example.org.:0"):
        out = carbonmeter("config", "check", str(tmp_path / "c.yaml"),
                          env={"CARBONMETER_SERVER_LISTEN": listen})
        assert out.returncode == 0, (listen, out.stderr)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "fifo", "directory"])
def test_devices_and_fifos_given_as_the_configuration(tmp_path, device):
    """Before: --config /dev/zero passed the 1 MiB check (a device's size is 0) and was
    read until memory ran out; a FIFO blocked."""
    path = {"fifo": tmp_path / "fifo", "directory": tmp_path}.get(device, Path(device))
    if device == "fifo":
        os.mkfifo(path)
    t0 = time.monotonic()
    for argv in (["config", "check", str(path)], ["serve", "--config", str(path)]):
        line = refused(carbonmeter(*argv, timeout=20), f"{path}: cannot read: not a regular "
                                                        "file (a ")
        assert ("character device" in line) == device.startswith("/dev/")
    assert time.monotonic() - t0 < 15


def test_a_device_as_the_web_config_and_a_fifo_as_a_secret(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server:\n  web_config_file: /dev/zero\n")
    refused(carbonmeter("config", "check", str(cfg)), "server.web_config_file: /dev/zero: "
            "cannot read: not a regular file (a character device)")
    fifo = tmp_path / "secret"
    os.mkfifo(fifo)
    cfg.write_text("carbon:\n  providers:\n    - type: electricitymaps\n      zone: DE\n"
                   f"      secret_file: {fifo}\n")
    refused(carbonmeter("config", "check", str(cfg), timeout=20),
            "carbon.providers[0].secret_file: ", "not a regular file (a FIFO)")


def test_an_oversized_configuration_is_refused_by_what_is_read(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("# " + "x" * (1 << 20) + "\n")
    refused(carbonmeter("config", "check", str(cfg)), "more than 1048576 bytes")


def test_a_writer_that_fails_keeps_the_shutdown_path(tmp_path, monkeypatch):
    """The emissions log's directory becomes a file while serve runs: the writer says why
    (once), the sampler goes on, and SIGTERM still ends with exit 0 and a last checkpoint."""
    one_socket(tmp_path / "sys")
    logs = tmp_path / "logs"
    logs.mkdir()
    state_path = tmp_path / "state.json"
    monkeypatch.setenv("CARBONMETER_STATE_PATH", str(state_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "probes: {disabled: [nvml, cpu_model, ram_model]}\n"
                   "state: {checkpoint_seconds: 3600}\n"
                   f"emissions_log: {{path: {logs / 'rows.csv'}}}\n")
    with open(tmp_path / "serve.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "carbonmeter", "serve", "--config",
                                 str(cfg), "--listen", f"127.0.0.1:{free_port()}", "--interval",
                                 "0.1"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (logs / "rows.csv").exists(), what="the first rows")
        (logs / "rows.csv").unlink()
        logs.rmdir()
        logs.write_text("not a directory any more\n")
        time.sleep(0.5)
        assert proc.poll() is None
        stopped_at = time.time()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(20)
    log = (tmp_path / "serve.log").read_text()
    assert code == 0, log[-3000:]
    assert log.count("emissions log") == 2 and "cannot write" in log, log[-3000:]
    assert "Traceback" not in log
    assert state.parse(state_path.read_bytes()).written_unix >= stopped_at
    assert stat.S_ISREG(logs.stat().st_mode)
