"""The sharing model and the ledger: what a user reads in the workload series."""

from __future__ import annotations

import math
import random

import pytest

from carbonmeter.attribution.ledger import Ledger
from carbonmeter.attribution.model import (
    HOST_KEY,
    OTHER_KEY,
    UNATTRIBUTED_KEY,
    IdlePower,
    WorkloadUsage,
    idle_shares,
    memory_idle_j,
    split,
)
from carbonmeter.attribution.view import Identity

A, B, C = ("pod", "a"), ("pod", "b"), ("pod", "c")


def test_dynamic_power_follows_cpu_time_and_the_rest_is_the_hosts():
    # 100 J in 1 s with 40 W idle: 60 J dynamic. A ran 3 s, B 1 s of 5 busy CPU-seconds.
    parts = split(100.0, 40.0, {A: 3.0, B: 1.0}, 5.0, {})
    assert parts[A] == pytest.approx(60 * 3 / 5)
    assert parts[B] == pytest.approx(60 * 1 / 5)
    assert parts[HOST_KEY] == pytest.approx(60 * 1 / 5)
    assert parts[UNATTRIBUTED_KEY] == pytest.approx(40.0)
    assert math.fsum(parts.values()) == 100.0


def test_no_cpu_time_leaves_the_dynamic_part_unattributed():
    assert split(10.0, 4.0, {}, 0.0, {A: 0.5}) == pytest.approx({A: 2.0, UNATTRIBUTED_KEY: 8.0})


def test_idle_above_energy_is_capped():
    parts = split(10.0, 25.0, {A: 1.0}, 1.0, {A: 1.0})
    assert parts == pytest.approx({A: 10.0, UNATTRIBUTED_KEY: 0.0})


def test_idle_policies():
    u = WorkloadUsage(requests={A: 2.0, B: 1.0}, ncpu=8, members=[A, B, C])
    assert idle_shares("unattributed", u) == {}
    assert idle_shares("equal", u) == pytest.approx({A: 1 / 3, B: 1 / 3, C: 1 / 3})
    # share of the node's CPUs requested; what nobody requested stays unattributed
    assert idle_shares("requests", u) == pytest.approx({A: 2 / 8, B: 1 / 8})
    parts = split(80.0, 80.0, {}, 0.0, idle_shares("requests", u))
    assert parts == pytest.approx({A: 20.0, B: 10.0, UNATTRIBUTED_KEY: 50.0})
    # more requested than the node has (Docker's default 1 CPU each): normalised
    over = WorkloadUsage(requests={A: 6.0, B: 6.0}, ncpu=4)
    assert idle_shares("requests", over) == pytest.approx({A: 0.5, B: 0.5})
    assert idle_shares("equal", WorkloadUsage()) == {}


def test_memory_is_shared_by_bytes_and_free_memory_is_idle():
    u = WorkloadUsage(memory={A: 2 << 30, B: 1 << 30}, mem_total=16 << 30, mem_free=10 << 30)
    idle, in_use = memory_idle_j(16.0, u)
    assert in_use == 6 << 30 and idle == pytest.approx(10.0)
    parts = split(16.0, idle, u.memory, in_use, {})
    assert parts == pytest.approx({A: 2.0, B: 1.0, HOST_KEY: 3.0, UNATTRIBUTED_KEY: 10.0})


def test_rounding_never_makes_a_negative_share():
    rng = random.Random(7)
    for _ in range(2000):
        weights = {("p", i): rng.random() for i in range(rng.randint(1, 30))}
        energy = rng.uniform(0, 500)
        parts = split(energy, rng.uniform(0, 100), weights, math.fsum(weights.values()),
                      {("p", 0): rng.random()})
        assert all(v >= 0 for v in parts.values())
        assert abs(math.fsum(parts.values()) - energy) <= 1e-12 * max(1.0, energy)


def test_idle_power_configured_model_or_lowest_seen():
    idle = IdlePower({"gpu": 50.0}, {"cpu": 12.0})
    assert idle.watts("gpu-0", "gpu", 300.0) == 50.0 and idle.how("gpu-0", "gpu") == "configured"
    assert idle.watts("cpu", "cpu", 80.0) == 12.0 and idle.how("cpu", "cpu") == "model"
    assert idle.watts("package-0", "cpu", 80.0) == 80.0  # first interval: all of it is idle
    assert idle.watts("package-0", "cpu", 35.0) == 35.0
    assert idle.watts("package-0", "cpu", 90.0) == 35.0  # the lowest stays
    assert idle.how("package-0", "cpu") == "lowest seen"


def ident(name: str) -> Identity:
    return Identity("pod", ("ns", name))


def record(led: Ledger, present: dict, credit: dict) -> None:
    """One interval: credit is key -> (joules, kind); one second long, 0.1 g per joule."""
    energy: dict = {}
    for key, (joules, kind) in credit.items():
        energy.setdefault(kind, {})[key] = joules
    led.record(present, energy, energy, 0.1)


def credit(joules: float, kind: str = "cpu") -> tuple:
    return joules, kind


def rows(ledger: Ledger) -> dict:
    return {(r.workload, r.labels, r.kind): r for r in ledger.rows(2)}


def test_top_n_and_other_keep_counters_monotonic():
    led = Ledger(top_n=2, min_energy_j=0.0)
    keys = [("pod", i) for i in range(4)]
    present = {k: ident(str(k[1])) for k in keys}
    record(led, present, {keys[0]: credit(10), keys[1]: credit(5), keys[2]: credit(1),
                         keys[3]: credit(1)})
    r = rows(led)
    assert r[("pod", ("ns", "0"), "cpu")].energy_j == 10
    assert r[("pod", ("ns", "1"), "cpu")].energy_j == 5
    assert ("pod", ("ns", "2"), "cpu") not in r
    assert r[("other", ("", ""), "cpu")].energy_j == 2
    # pod 3 overtakes pod 1: pod 1's series disappears, pod 3's starts from this interval
    record(led, present, {keys[3]: credit(20), keys[1]: credit(1)})
    r = rows(led)
    assert r[("pod", ("ns", "3"), "cpu")].energy_j == 20
    assert ("pod", ("ns", "1"), "cpu") not in r
    assert r[("other", ("", ""), "cpu")].energy_j == 3  # 2 before + pod 1's 1 J
    # pod 1 comes back on top: its series continues from 5, nothing counted twice
    record(led, present, {keys[1]: credit(100)})
    r = rows(led)
    assert r[("pod", ("ns", "1"), "cpu")].energy_j == 105
    assert ("pod", ("ns", "0"), "cpu") not in r  # out of the top 2 now: hidden
    assert led.hidden() == {"cpu": (10, 1)}
    total = sum(x.energy_j for x in r.values()) + led.hidden()["cpu"][0]
    assert total == pytest.approx(10 + 5 + 1 + 1 + 20 + 1 + 100)


def test_minimum_energy_and_pending_names_go_to_other():
    led = Ledger(top_n=10, min_energy_j=5.0)
    big, small, unnamed = ("pod", "big"), ("pod", "small"), ("pod", "x")
    record(led, {big: ident("big"), small: ident("small"), unnamed: Identity("pod", None)},
               {big: credit(6), small: credit(4), unnamed: credit(50)})
    r = rows(led)
    assert r[("pod", ("ns", "big"), "cpu")].energy_j == 6
    assert ("pod", ("ns", "small"), "cpu") not in r
    assert r[("other", ("", ""), "cpu")].energy_j == 54
    record(led, {big: ident("big"), small: ident("small"), unnamed: ident("x")},
               {small: credit(2), unnamed: credit(1)})
    r = rows(led)
    assert r[("pod", ("ns", "small"), "cpu")].energy_j == 2  # crossed 5 J: its own from now
    assert r[("pod", ("ns", "x"), "cpu")].energy_j == 1  # named now


def test_ended_workloads_stay_until_exported_once_then_retire():
    led = Ledger(top_n=10, min_energy_j=0.0)
    led.register("scrape")
    a, b = ("pod", "a"), ("pod", "b")
    record(led, {a: ident("a"), b: ident("b")}, {a: credit(3), b: credit(4)})
    # b ends; its last interval's energy still arrives (found through its parent cgroup)
    record(led, {a: ident("a")}, {a: credit(1), b: credit(2)})
    r = rows(led)
    assert r[("pod", ("ns", "b"), "cpu")].energy_j == 6
    assert r[("pod", ("ns", "b"), "cpu")].power_w is None  # ended: no power
    record(led, {a: ident("a")}, {a: credit(1)})
    assert ("pod", ("ns", "b"), "cpu") in rows(led)  # nobody exported it yet
    led.ack("scrape", led.interval)
    record(led, {a: ident("a")}, {a: credit(1)})
    assert ("pod", ("ns", "b"), "cpu") not in rows(led)
    assert led.hidden()["cpu"][0] == 6
    assert sum(x.energy_j for x in led.rows(2)) + led.hidden()["cpu"][0] == pytest.approx(12)


def test_unexported_ended_workloads_are_dropped_after_an_hour():
    now = [0.0]
    led = Ledger(top_n=10, min_energy_j=0.0, clock=lambda: now[0])
    a = ("pod", "a")
    record(led, {a: ident("a")}, {a: credit(3)})
    record(led, {}, {})
    now[0] = 3601
    record(led, {}, {})
    assert not [r for r in led.rows(2) if r.workload == "pod"]


def test_a_new_workload_never_takes_labels_still_shown_for_an_ended_one():
    # PID reuse with the same comm: same labels; the old series is shown until exported
    led = Ledger(top_n=10, min_energy_j=0.0)
    led.register("scrape")
    old, new = ("process", 7, 100), ("process", 7, 200)
    same = Identity("process", ("7", "sh"))
    record(led, {old: same}, {old: credit(5)})
    record(led, {new: same}, {new: credit(2)})
    shown = [r for r in led.rows(2) if r.workload == "process"]
    assert [(r.energy_j, r.power_w) for r in shown] == [(5, None)]
    assert rows(led)[("other", ("", ""), "cpu")].energy_j == 2
    led.ack("scrape", led.interval)
    record(led, {new: same}, {new: credit(1)})
    shown = [r for r in led.rows(2) if r.workload == "process"]
    assert [(r.energy_j, r.power_w) for r in shown] == [(1, 1)]


def test_special_rows_exist_from_the_start_for_every_kind():
    led = Ledger(top_n=10, min_energy_j=0.0, host_row=False)
    record(led, {}, {UNATTRIBUTED_KEY: credit(1, "gpu"), OTHER_KEY: credit(2, "cpu")})
    r = rows(led)
    assert set(r) == {("other", ("", ""), "gpu"), ("other", ("", ""), "cpu"),
                      ("unattributed", ("", ""), "gpu"), ("unattributed", ("", ""), "cpu")}
