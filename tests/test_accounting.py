"""Accounting: counters unwrapped exactly, power integrated exactly, emissions per interval."""

from __future__ import annotations

import math

import pytest

from carbonmeter.accounting import Accounting, counter_delta_uj
from carbonmeter.carbon.intensity import Intensity, grams
from carbonmeter.probes.base import Device, Reading

C = Intensity(500.0, "X", "config", "test")
WRAP = 262143328850 * 2**32 / (2**32 - 1)  # a real Intel package range, one unit added


def test_counter_delta_plain_wrap_and_reset():
    assert counter_delta_uj(100, 250, WRAP) == 150
    # one tick past the register's last value: from max to 0 is exactly one unit
    top = 262143328850
    assert counter_delta_uj(top, 0, WRAP) == pytest.approx(WRAP - top)
    assert WRAP - top == pytest.approx(61.035, abs=0.01)
    assert counter_delta_uj(top - 10, 5, WRAP) == pytest.approx(WRAP - top + 15)
    # a counter without a wrap that goes back was reset: nothing is invented
    assert counter_delta_uj(5000, 10, None) is None


def test_counter_totals_across_many_wraps_to_the_microjoule():
    dev = Device("package-0", "cpu", "rapl", wrap_uj=WRAP)
    acc = Accounting(pue=1.0)
    # intel_rapl keeps the unit as an integer of nJ/1000: 10^9 / 2^14 = 61035, i.e. 61.035 µJ
    # per tick, and reports floor(ticks x unit); max_energy_range_uj = floor((2^32 - 1) x
    # 61.035) = 262143328850, the value real Intel machines show.
    unit = 61035 / 1000
    assert math.floor((2**32 - 1) * unit) == 262143328850
    ticks, true_uj, t = 123456, 0.0, 0.0
    acc.add(Reading(dev, counter_uj=math.floor((ticks % 2**32) * unit)), t, C)
    for step in range(200):  # 200 steps of ~0.8 of a wrap each: ~160 wraps, at ~207 W
        t += 1000.0
        add = 3_400_000_000 + step * 997
        ticks += add
        true_uj += add * unit
        acc.add(Reading(dev, counter_uj=math.floor((ticks % 2**32) * unit)), t, C)
    (total,) = acc.totals()
    wraps = ticks // 2**32
    assert wraps > 150
    assert abs(total.energy_j * 1e6 - true_uj) <= 1.0 * wraps + 1


def test_power_is_integrated_by_trapezoid_on_the_monotonic_clock():
    dev = Device("gpu-1", "gpu", "nvml")
    acc = Accounting(pue=1.0)
    trace = [(0.0, 100.0), (0.5, 200.0), (1.5, 200.0), (2.0, 50.0), (4.0, 50.0)]
    for t, p in trace:
        acc.add(Reading(dev, power_w=p), t, C)
    expected = 0.5 * (100 + 200) / 2 + 1.0 * 200 + 0.5 * (200 + 50) / 2 + 2.0 * 50
    (total,) = acc.totals()
    assert total.energy_j == pytest.approx(expected)
    assert total.power_w == pytest.approx(50.0)


def test_mean_power_sources_are_integrated_as_rectangles():
    """A load model reports the mean over the interval just ended, not an instant."""
    dev = Device("cpu", "cpu", "cpu_model", estimated=True, mean_power=True)
    acc = Accounting(pue=1.0)
    for t, p in [(0.0, 10.0), (1.0, 30.0), (3.0, 20.0)]:
        acc.add(Reading(dev, power_w=p), t, C)
    assert acc.totals()[0].energy_j == pytest.approx(1 * 30 + 2 * 20)


def test_emissions_use_the_intensity_of_each_interval():
    dev = Device("ram", "ram", "ram_model", estimated=True)
    acc = Accounting(pue=1.2)
    intensities = [100.0, 100.0, 800.0, 50.0, 50.0, 300.0]
    expected = 0.0
    for i, c in enumerate(intensities):
        acc.add(Reading(dev, power_w=40.0), float(i * 10), Intensity(c, "X", "t", "t"))
        if i:
            expected += 40.0 * 10 / 3.6e6 * 1.2 * c  # ΔE × PUE × C(t)
    (total,) = acc.totals()
    assert total.energy_j == pytest.approx(40.0 * 50)
    assert total.emissions_g == pytest.approx(expected)
    assert total.emissions_g != pytest.approx(grams(total.energy_j, 1.2, C))


def test_counter_reset_is_not_counted_and_totals_never_go_back():
    dev = Device("gpu-0", "gpu", "nvml")
    acc = Accounting(pue=1.0)
    acc.add(Reading(dev, counter_uj=5_000_000), 0.0, C)
    acc.add(Reading(dev, counter_uj=7_000_000), 1.0, C)
    acc.add(Reading(dev, counter_uj=1_000_000), 2.0, C)  # driver reloaded
    acc.add(Reading(dev, counter_uj=4_000_000), 3.0, C)
    assert acc.totals()[0].energy_j == pytest.approx(2.0 + 3.0)


def test_lost_device_keeps_its_total_and_rebaselines():
    dev = Device("gpu-0", "gpu", "nvml")
    acc = Accounting(pue=1.0)
    acc.add(Reading(dev, power_w=100.0), 0.0, C)
    acc.add(Reading(dev, power_w=100.0), 1.0, C)
    acc.lost("gpu-0")
    (total,) = acc.totals()
    assert total.energy_j == pytest.approx(100.0) and total.power_w is None
    acc.add(Reading(dev, power_w=300.0), 60.0, C)  # back after a minute: gap not guessed
    acc.add(Reading(dev, power_w=300.0), 61.0, C)
    assert acc.totals()[0].energy_j == pytest.approx(400.0)
