"""`carbonmeter run -- CMD` as users run it: a subprocess on fixture probes.

The powercap fixture reproduces the kernel's RAPL files (32-bit counters in energy units,
wrapping at max_energy_range_uj); the command under measurement advances them itself, through
the fixture's own API (the tree is pickled to a file the child loads and saves), so the
energy it spends lies wholly between carbonmeter's first and last reading.
"""

from __future__ import annotations

import json
import os
import pickle
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonmeter.carbon.compare import peers
from carbonmeter.carbon.regions import find_region
from carbonmeter.measure.summary import SCHEMA
from tests.fixtures.powercap import FAST_FORWARD_UW, two_sockets_with_dram
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable

ADVANCE = """
import pickle, sys, time
sys.path.insert(0, {root!r})
tree = pickle.load(open({state!r}, "rb"))
time.sleep(0.02)
for zone, joules in {steps!r}:
    tree.advance(zone, joules)
    time.sleep(0.01)
pickle.dump(tree, open({state!r}, "wb"))
"""


def carbonmeter(*args: str, config: Path | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "carbonmeter", "run", *(["--config", str(config)] if config else []), *args]
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run(cmd, timeout=60, **kw)


@pytest.fixture
def rapl(tmp_path):
    """Two sockets with DRAM zones, counters only (no estimate, no GPU)."""
    tree = two_sockets_with_dram(tmp_path / "sys")
    state = tmp_path / "tree.pickle"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "probes: {disabled: [nvml, platform_model]}\n"
                   f"carbon: {{region: FR, pue: 1.2}}\n"
                   f"emissions_log: {{path: {tmp_path / 'log.csv'}}}\n")
    return tree, state, cfg


def test_exact_energy_of_a_short_command_between_counter_reads(rapl, tmp_path):
    tree, state, cfg = rapl
    # package-0 starts 100 J below its wrap: the command's 150 J cross it.
    wrap_j = tree.max_energy_range_uj("intel-rapl:0") / 1e6
    tree.advance("intel-rapl:0", wrap_j - tree.energy_uj("intel-rapl:0") / 1e6 - 100)
    state.write_bytes(pickle.dumps(tree))
    steps = [("intel-rapl:0", 150.0), ("intel-rapl:1", 12.5), ("intel-rapl:0:0", 3.25),
             ("intel-rapl:1:0", 0.5)]
    child = ADVANCE.format(root=str(ROOT), state=str(state), steps=steps)
    before = {z: tree.true_energy_uj(z) for z in tree.zones()}
    out = carbonmeter("--json", "--", PY, "-c", child, config=cfg)
    assert out.returncode == 0, out.stderr
    after = pickle.loads(state.read_bytes())
    assert after.wraps("intel-rapl:0") == 1
    report = json.loads(out.stderr)
    got = {d["id"]: d["energy_j"] for d in report["devices"]}
    for device, zone in (("package-0", "intel-rapl:0"), ("package-1", "intel-rapl:1"),
                         ("dram-0", "intel-rapl:0:0"), ("dram-1", "intel-rapl:1:0")):
        true_j = float(after.true_energy_uj(zone) - before[zone]) / 1e6
        # exact but for the kernel's flooring of each reading to whole µJ, and 1 µJ a wrap
        assert got[device] == pytest.approx(true_j, abs=3e-6), device
    total = sum(j for _, j in steps)
    machine = report["machine"]
    assert machine["energy_j"] == pytest.approx(total, abs=1e-4)
    assert machine["measured_energy_j"] == machine["energy_j"]
    assert machine["estimated_energy_j"] == 0
    fr = find_region("FR").g_per_kwh
    assert machine["emissions_g"] == pytest.approx(total / 3.6e6 * 1.2 * fr, rel=1e-6)
    # the headline is the command's process tree, a part of the machine's
    assert report["scope"] == "process tree"
    assert 0 <= report["energy_j"] <= machine["energy_j"]
    assert report["intensity"]["region"] == "FR" and report["pue"] == 1.2
    # the log got one row with the same figures
    log = (tmp_path / "log.csv").read_text().splitlines()
    assert len(log) == 2 and log[0].startswith("timestamp,project_name,run_id")


def test_json_schema(rapl):
    _, _, cfg = rapl
    out = carbonmeter("--json", "--", "true", config=cfg)
    assert out.returncode == 0 and out.stdout == b""
    doc = json.loads(out.stderr)  # the whole of stderr is one JSON object
    schema = {
        "schema": str, "command": list, "exit_code": int, "wall_time_s": float, "scope": str,
        "scope_note": str, "energy_j": float, "emissions_g": float, "energy_by_kind_j": dict,
        "method": str, "machine": dict, "intensity": dict, "pue": float, "devices": list,
        "greenest_regions": list,
    }
    assert set(doc) == set(schema)
    for key, kind in schema.items():
        assert isinstance(doc[key], kind), key
    assert doc["schema"] == SCHEMA and doc["command"] == ["true"] and doc["exit_code"] == 0
    assert doc["scope"] == "process tree" and doc["scope_note"].startswith("its process tree: ")
    machine = doc["machine"]
    assert set(machine) == {"energy_j", "emissions_g", "measured_energy_j",
                            "estimated_energy_j", "estimated_relative_error", "measured_note",
                            "energy_by_kind_j"}
    assert machine["estimated_relative_error"] is None  # all measured: no error bar
    assert 0 <= doc["energy_j"] <= machine["energy_j"]
    assert set(doc["intensity"]) == {"g_per_kwh", "region", "provider", "source", "year"}
    assert machine["energy_by_kind_j"].keys() == {"cpu", "dram"}
    assert machine["measured_note"] == "100 % measured"
    device_keys = {"id", "kind", "source", "name", "estimated", "energy_j", "emissions_g",
                   "mean_power_w", "relative_error"}
    assert all(set(d) == device_keys for d in doc["devices"])
    assert all(d["relative_error"] is None for d in doc["devices"])  # measured: no error bar
    assert [d["id"] for d in doc["devices"]] == ["package-0", "package-1", "dram-0", "dram-1"]
    region_keys = {"code", "name", "kind", "provider", "g_per_kwh", "year", "emissions_g",
                   "saving_g"}
    assert len(doc["greenest_regions"]) == 3
    assert all(set(r) == region_keys for r in doc["greenest_regions"])


def test_text_summary_says_units_sources_scope_and_greener_regions(tmp_path):
    tree = two_sockets_with_dram(tmp_path / "sys", max_power_uw=FAST_FORWARD_UW)
    state = tmp_path / "tree.pickle"
    state.write_bytes(pickle.dumps(tree))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                   "probes: {disabled: [nvml, platform_model]}\ncarbon: {region: DE}\n")
    child = ADVANCE.format(root=str(ROOT), state=str(state),
                           steps=[("intel-rapl:0", 7200.0), ("intel-rapl:0:0", 0.25)])
    out = carbonmeter("--", PY, "-c", child, config=cfg)
    assert out.returncode == 0
    text = out.stderr.decode()
    assert "exited with 0" in text
    assert "package-0 (cpu, rapl, measured)" in text and "2.00 Wh" in text  # 7200 J
    assert "dram-0 (dram, rapl, measured)" in text and "0.250 J" in text
    de = find_region("DE").g_per_kwh
    assert f"intensity   {de:g} gCO2eq/kWh (DE:" in text
    grams = 7200.25 / 3.6e6 * de
    machine = next(line for line in text.splitlines() if line.startswith("  machine "))
    assert f"{grams * 1000:.3g} mg CO2eq  every process, while it ran" in machine
    lines = text.splitlines()
    assert lines[2].startswith("  command ") and "its process tree: " in lines[2]
    assert lines[3] == machine and "2.00 Wh" in machine
    assert "  measured    100 % measured" in text
    best = [r for r in peers(None)][:3]
    for r in best:
        assert r.name in text


def test_estimated_sources_are_sampled_and_said_so(tmp_path):
    """A bare-metal fixture host (cpuinfo without the hypervisor flag, a /proc/stat that stands
    still: idle) with a configured TDP: cpu, ram and platform are estimated, each with the
    idle figures of the bundled model and the TDP case's idle error bar."""
    import csv as csv_

    proc, sys_ = tmp_path / "proc", tmp_path / "sys"
    (proc / "self").mkdir(parents=True)
    sys_.mkdir()
    (proc / "cpuinfo").write_text("".join(
        f"processor\t: {n}\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n"
        "model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\nphysical id\t: 0\n"
        "flags\t\t: fpu sse2\n\n" for n in range(4)))
    (proc / "stat").write_text("cpu  100 0 100 10000 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\n")
    (proc / "self" / "cgroup").write_text("0::/\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{sysfs: {sys_}, procfs: {proc}}}\n"
                   "probes: {disabled: [nvml]}\ncpu: {tdp_watts: 100}\n")
    out = carbonmeter("--json", "--interval", "0.05", "--", "sleep", "0.3", config=cfg)
    doc = json.loads(out.stderr)
    kinds = {d["id"]: d for d in doc["devices"]}
    assert all(kinds[k]["estimated"] for k in ("cpu", "ram", "platform"))
    rows = {}
    for name in ("power_model.csv", "power_params.csv"):
        text = (ROOT / "config" / name).read_text()
        rows[name] = list(csv_.DictReader(line for line in text.splitlines()
                                          if not line.startswith("#")))
    skylake = next(r for r in rows["power_model.csv"] if r["generation"] ==
                   "intel-skylake-server")
    params = {r["name"]: r["value"] for r in rows["power_params.csv"]}
    assert kinds["cpu"]["mean_power_w"] == pytest.approx(100 * float(skylake["tdp_idle"]),
                                                         rel=0.05)
    assert kinds["ram"]["mean_power_w"] == pytest.approx(16 * 0.1, rel=0.05)
    assert kinds["platform"]["mean_power_w"] == pytest.approx(
        float(params["platform_idle_w_per_socket"]), rel=0.05)
    assert kinds["cpu"]["relative_error"] == pytest.approx(float(params["error_tdp_idle"]))
    machine = doc["machine"]
    assert 0 < machine["estimated_relative_error"] < 1
    assert machine["measured_energy_j"] == 0
    assert machine["estimated_energy_j"] == machine["energy_j"]
    assert machine["measured_note"] == "0 % measured: every figure is an estimate"
    assert doc["intensity"]["region"] == "world"
    # the text says "± N %" beside each estimated figure and the estimated total
    text = carbonmeter("--interval", "0.05", "--", "true", config=cfg).stderr.decode()
    bar = f"± {float(params['error_tdp_idle']) * 100:.0f} %"
    assert re.search(rf"^ +cpu \(cpu, cpu_model, estimated\) .* W  {bar}$", text, re.M), text
    assert re.search(r"^ +total .*estimated ± [\d.]+ %\)$", text, re.M), text


@pytest.mark.parametrize(("command", "code"), [
    ([PY, "-c", "import sys; sys.exit(7)"], 7),
    (["sh", "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
    (["sh", "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
    (["no-such-command-anywhere"], 127),
])
def test_exit_codes(rapl, command, code):
    _, _, cfg = rapl
    out = carbonmeter("--", *command, config=cfg)
    assert out.returncode == code, out.stderr
    if code == 127:
        assert b"no-such-command-anywhere: command not found" in out.stderr
    else:
        assert f"exited with {code}".encode() in out.stderr


def test_not_executable_is_126(rapl, tmp_path):
    _, _, cfg = rapl
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    out = carbonmeter("--", str(script), config=cfg)
    assert out.returncode == 126 and b"Permission denied" in out.stderr


def test_stdin_stdout_stderr_pass_through_untouched(rapl, tmp_path):
    _, _, cfg = rapl
    child = ("import sys; data = sys.stdin.buffer.read(); sys.stdout.buffer.write(data[::-1]); "
             "sys.stderr.buffer.write(b'\\x00err\\xff no newline')")
    payload = bytes(range(256)) * 64
    summary = tmp_path / "summary.txt"
    out = carbonmeter("--output", str(summary), "--", PY, "-c", child, config=cfg,
                      input=payload)
    assert out.returncode == 0
    assert out.stdout == payload[::-1]
    assert out.stderr == b"\x00err\xff no newline"  # the summary went to --output
    assert "exited with 0" in summary.read_text()
    # without --output the summary follows the command's stderr, which is left as it was
    out = carbonmeter("--", PY, "-c", child, config=cfg, input=b"abc")
    assert out.stdout == b"cba" and out.stderr.startswith(b"\x00err\xff no newline")
    # the command's stdout is not a pipe to us: it is our own stdout, as a terminal sees it
    with open(tmp_path / "out.txt", "w") as f:
        carbonmeter("--", PY, "-c", "import os; print(os.readlink('/proc/self/fd/1'))",
                    config=cfg, stdout=f, stderr=None)
    assert (tmp_path / "out.txt").read_text().strip() == str(tmp_path / "out.txt")


TRAP = """
import signal, sys, time
def got(n, _):
    print("child got", signal.Signals(n).name, flush=True)
    sys.exit(40 + n)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
    signal.signal(s, got)
open(sys.argv[1], "w").close()
time.sleep(30)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT])
def test_signals_are_forwarded_to_the_command(rapl, tmp_path, sig):
    _, _, cfg = rapl
    ready = tmp_path / "ready"
    proc = subprocess.Popen([PY, "-m", "carbonmeter", "run", "--config", str(cfg), "--", PY, "-c",
                             TRAP, str(ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(ready.exists, timeout=30, what="the command to start")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert out.decode() == f"child got {signal.Signals(sig).name}\n"
    assert proc.returncode == 40 + sig, err
    assert f"exited with {40 + sig}".encode() in err


def test_a_terminal_interrupt_reaches_the_command_once(rapl, tmp_path):
    """^C on a terminal signals the whole foreground process group: carbonmeter must not
    forward it again (the command would see two SIGINTs)."""
    _, _, cfg = rapl
    ready = tmp_path / "ready"
    counter = ("import signal, sys, time\nn = 0\ndef got(*_):\n    global n\n    n += 1\n"
               "signal.signal(signal.SIGINT, got)\nopen(sys.argv[1], 'w').close()\n"
               "t = time.monotonic()\nwhile time.monotonic() - t < 3 and n == 0:\n"
               "    time.sleep(0.01)\ntime.sleep(0.5)\nprint('SIGINTs:', n, flush=True)\n")
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session of its own, with the pty as controlling terminal
        os.execv(PY, [PY, "-m", "carbonmeter", "run", "--config", str(cfg), "--", PY, "-c",
                      counter, str(ready)])
    try:
        wait_for(ready.exists, timeout=30, what="the command to start")
        os.write(fd, b"\x03")  # the terminal's INTR character
        output = b""
        deadline = time.monotonic() + 30
        while b"exited with" not in output and time.monotonic() < deadline:
            try:
                output += os.read(fd, 4096)
            except OSError:
                break
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert b"SIGINTs: 1" in output, output
    assert os.waitstatus_to_exitcode(status) == 0


def test_bad_usage_exits_2_before_running(tmp_path):
    out = carbonmeter("--")
    assert out.returncode == 2 and b"no command given" in out.stderr
    out = carbonmeter("--interval", "0", "--", "true")
    assert out.returncode == 2 and b"--interval 0 is out of range" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("carbon: {region: Atlantis}\n")
    marker = tmp_path / "ran"
    out = carbonmeter("--", "touch", str(marker), config=bad)
    assert out.returncode == 2 and b"unknown region 'Atlantis'" in out.stderr
    assert not marker.exists()


def test_a_log_that_cannot_be_written_is_reported_and_the_exit_code_kept(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probes: {disabled: [rapl, nvml]}\n"
                   f"emissions_log: {{path: {blocker / 'log.csv'}, format: jsonl}}\n")
    out = carbonmeter("--", "sh", "-c", "exit 3", config=cfg)
    assert out.returncode == 3
    assert b"emissions log" in out.stderr and b"cannot write" in out.stderr
    assert b"exited with 3" in out.stderr and b"Traceback" not in out.stderr


def test_run_pushes_its_totals_at_exit(rapl, tmp_path):
    """A batch job ends between scrapes: its energy waits in a real Pushgateway, as counters."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.helpers import http_get, pushgateway

    tree, state, cfg = rapl
    state.write_bytes(pickle.dumps(tree))
    child = ADVANCE.format(root=str(ROOT), state=str(state), steps=[("intel-rapl:1", 40.0)])
    with pushgateway(tmp_path) as url:
        cfg.write_text(cfg.read_text() + f"pushgateway: {{url: {url}, job: nightly, "
                                          "instance: batch-1}\n")
        out = carbonmeter("--json", "--", PY, "-c", child, config=cfg)
        assert out.returncode == 0, out.stderr
        text = http_get(f"{url}/metrics")[2].decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    energy = families["carbonmeter_energy_joules"]
    assert energy.type == "counter"
    pushed = {s.labels["device"]: s for s in energy.samples if s.name.endswith("_total")}
    assert pushed["package-1"].labels["job"] == "nightly"
    assert pushed["package-1"].labels["instance"] == "batch-1"
    assert pushed["package-1"].value == pytest.approx(40.0, abs=1e-4)
    report = json.loads(out.stderr)
    host = families["carbonmeter_host_emissions_grams"].samples[0].value
    assert host == pytest.approx(report["machine"]["emissions_g"], rel=1e-9)


def test_the_process_tree_gets_its_share_and_says_so(tmp_path):
    """On the CPU estimate (this machine has no sensor), a command that keeps one CPU busy
    gets most of the dynamic energy; an idle one gets almost none. The whole machine's
    figures stay beside it."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cpu: {tdp_watts: 100}\nprobes: {disabled: [rapl, nvml]}\n")
    busy = ("import time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.6: pass\n")
    out = carbonmeter("--json", "--interval", "0.1", "--", PY, "-c", busy, config=cfg)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stderr)
    assert doc["scope"] == "process tree" and "/proc/<pid>/stat" in doc["method"]
    assert 0 < doc["energy_j"] < doc["machine"]["energy_j"]
    assert doc["energy_by_kind_j"].get("cpu", 0) > 0
    idle = json.loads(carbonmeter("--json", "--interval", "0.1", "--", "sleep", "0.6",
                                  config=cfg).stderr)
    assert idle["energy_j"] < doc["energy_j"] / 5


def test_no_procfs_reports_the_whole_machine_and_why(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths: {{procfs: {tmp_path / 'noproc'}}}\ncpu: {{tdp_watts: 100}}\n"
                   "probes: {disabled: [rapl, nvml, cpu_model, ram_model, platform_model]}\n"
                   "declared: [{id: box, kind: other, watts: 10}]\n")
    doc = json.loads(carbonmeter("--json", "--", "true", config=cfg).stderr)
    assert doc["scope"] == "machine" and doc["method"] is None
    assert doc["scope_note"].startswith("the whole machine's")
    assert "could not be measured" in doc["scope_note"]
    # the headline is then the machine's, and says so
    assert (doc["energy_j"], doc["emissions_g"]) == (doc["machine"]["energy_j"],
                                                     doc["machine"]["emissions_g"])
