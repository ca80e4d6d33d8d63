"""Steps on the sampler's clock: due ones run at the first sample at or after their time,
inline on the sampler's thread or handed to their worker, which a slow step never lets
delay the sampler."""

from __future__ import annotations

import threading
import time

from carbonmeter.periodic import Periodic, Ticks
from tests.helpers import wait_for


class Step(Periodic):
    def __init__(self, interval: float, *, inline: bool, hold: threading.Event | None = None):
        super().__init__("step", interval)
        self.inline = inline
        self.hold = hold
        self.threads: list[str] = []
        self.finals = 0

    def tick(self) -> None:
        self.threads.append(threading.current_thread().name)
        if self.hold is not None:
            self.hold.wait(10)

    def final(self) -> None:
        self.finals += 1


def test_an_inline_step_runs_on_the_sampler_thread_when_due_and_not_before():
    ticks, step = Ticks(), Step(0.2, inline=True)
    ticks.add(step)
    step.start()
    ticks.poke()
    assert step.threads == []  # not due yet
    time.sleep(0.25)
    ticks.poke()
    ticks.poke()  # once per due time, however many samples come
    assert step.threads == [threading.current_thread().name]
    step.close()
    assert step.finals == 1


def test_a_slow_network_step_never_delays_the_sampler():
    hold = threading.Event()
    ticks, step = Ticks(), Step(0.01, inline=False, hold=hold)
    ticks.add(step)
    step.start()
    time.sleep(0.02)
    t0 = time.monotonic()
    for _ in range(5):  # the first wakes the worker, which hangs; the rest are not queued
        ticks.poke()
        time.sleep(0.02)
    assert time.monotonic() - t0 < 0.5
    wait_for(lambda: step.threads, what="the worker's tick")
    assert step.threads == ["step"]
    hold.set()
    time.sleep(0.05)
    ticks.poke()
    wait_for(lambda: len(step.threads) == 2, what="the next tick")
    step.close()
    assert step.finals == 1


def test_a_step_no_sampler_drives_keeps_time_itself():
    step = Step(0.05, inline=True)  # as a poller started on its own
    step.start()
    wait_for(lambda: len(step.threads) >= 2, what="two ticks on its own thread")
    step.close()
    assert set(step.threads) == {"step"}
