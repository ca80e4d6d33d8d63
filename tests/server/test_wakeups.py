"""An idle `carbonmeter serve` wakes once per sampling interval, and nothing else polls.

Each wake-up of an idle process costs a timer, a context switch and cold caches (about
0.1 ms on a virtual machine, more than a sample's Python), so the sampling loop is the one
clock: the checkpoint and the emissions log run after its samples, and the HTTP server
sleeps in epoll until a client comes. The kernel counts each time a thread blocks
(voluntary_ctxt_switches in /proc/PID/task/TID/status); over a few intervals with no
scrapes, that is about one per sample in the sampling thread and none elsewhere. A thread
that sleeps on a timeout of its own (a poll interval, a sink's own timer) shows up here.
The files go to memory (/dev/shm), where an fsync does not block: on a disk it waits for
the device, which the kernel counts too, and which is no timer.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.fixtures.powercap import two_sockets_with_dram
from tests.helpers import http_get, wait_for
from tests.test_end_to_end import start_serve, stop

INTERVAL = 0.25
WINDOW = 3.0


def blocked(pid: int) -> dict[str, int]:
    """Thread id -> the times it has blocked (voluntary context switches)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended
            continue
        for line in status.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                out[task.name] = int(line.split()[1])
    return out


def test_an_idle_serve_wakes_once_per_interval(tmp_path, ram_path):
    two_sockets_with_dram(tmp_path / "sys")
    proc, target = start_serve(tmp_path, f"""
paths: {{sysfs: {tmp_path / 'sys'}}}
carbon: {{region: FR}}
state: {{checkpoint_seconds: {2 * INTERVAL}}}
emissions_log: {{path: {ram_path / 'emissions.csv'}}}
""", interval=INTERVAL, env={"CARBONMETER_STATE_PATH": str(ram_path / "state.json")})
    try:
        wait_for(lambda: b'device="dram-1"' in http_get(f"http://{target}/metrics")[2],
                 what="first sample")
        time.sleep(2 * INTERVAL)  # the scrape's connection closed, the next sample taken
        before = blocked(proc.pid)
        t0 = time.monotonic()
        time.sleep(WINDOW)
        after = blocked(proc.pid)
        samples = (time.monotonic() - t0) / INTERVAL
        assert (ram_path / "emissions.csv").read_text().count("\n") > 2  # the rows run
        assert (ram_path / "state.json").exists()  # and so do the checkpoints
    finally:
        assert stop(proc) == 0
    woke = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    # the sampling thread: one timed wait per sample, and some slack for a busy machine
    # (where there is no /dev/shm, the files' fsyncs wait for a disk too)
    assert woke[0] <= 1.5 * samples + 3 or ram_path == tmp_path, woke
    # every other thread sleeps until something happens: none of it happened here
    assert sum(woke[1:]) <= 2, woke
