"""A stopped exporter (SIGSTOP, as a suspend or a debugger would) is a gap, judged like
downtime: the RAPL counter proves the energy spent meanwhile; the RAM estimate cannot, so
that time is counted as unmeasured, not guessed.

The exporter runs as a subprocess on the fixture host of tests/test_crash_restart.py."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers import http_get, wait_for
from tests.test_crash_restart import RAM_W, Host, metric

STOPPED_S = 3.0


def test_sigstop_sigcont_is_a_gap_judged_like_downtime(tmp_path):
    host = Host(tmp_path, seed=1)
    proc, url = host.start_listening()

    def value(name: str, device: str) -> float | None:
        return metric(http_get(url)[2].decode(), name, device)

    try:
        wait_for(lambda: value("carbonmeter_energy_joules_total", "ram"), what="a sample")
        time.sleep(0.5)
        pkg_before = value("carbonmeter_energy_joules_total", "package-0")
        ram_before = value("carbonmeter_energy_joules_total", "ram")
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        host.tree.advance("intel-rapl:0", 400)  # 133 W while stopped
        time.sleep(STOPPED_S)
        os.kill(proc.pid, signal.SIGCONT)
        stopped = time.monotonic() - t0
        wait_for(lambda: value("carbonmeter_unmeasured_seconds_total", "ram") > 0,
                 what="the gap counted")
        time.sleep(0.5)
        after = time.monotonic()
        assert value("carbonmeter_energy_joules_total", "package-0") == pytest.approx(
            pkg_before + 400, abs=1e-3)
        assert value("carbonmeter_unmeasured_seconds_total", "package-0") == 0
        gap = value("carbonmeter_unmeasured_seconds_total", "ram")
        assert stopped - 0.2 <= gap <= stopped + 1.0
        ram_after = value("carbonmeter_energy_joules_total", "ram")
        assert ram_after - ram_before <= RAM_W * (after - t0 - gap + 0.3)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
