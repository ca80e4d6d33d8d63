"""Measurements in one process share one discovery: a decorated function called in a loop
pays for finding the probes once, and each measurement still has a baseline of its own.

Energy comes from the powercap fixture (the kernel's RAPL counter files), so figures are exact;
discovery is counted by wrapping `carbonmeter.discovery.discover`.
"""

from __future__ import annotations

import pytest

from carbonmeter import discovery, track, track_emissions

PKG = "intel-rapl:0"


@pytest.fixture
def discoveries(monkeypatch):
    """How many times probes were discovered (from here on)."""
    calls = []
    real = discovery.discover

    def counting(cfg):
        calls.append(cfg)
        return real(cfg)

    discovery.forget()
    monkeypatch.setattr(discovery, "discover", counting)
    yield calls
    discovery.forget()


def test_discovery_runs_once_for_many_measurements(rapl, discoveries):
    tree, cfg = rapl

    @track_emissions(config=cfg, save_to_file=False)
    def work(joules: float) -> None:
        tree.advance(PKG, joules)

    for j in (1, 2, 3):
        work(j)
        assert work.last_result.energy_j == pytest.approx(j, abs=1e-4)
    for _ in range(5):
        with track(config=cfg) as t:
            tree.advance(PKG, 4)
        assert t.result.energy_j == pytest.approx(4, abs=1e-4)
    assert len(discoveries) == 1


def test_nested_and_overlapping_trackers_each_keep_their_own_baseline(rapl, discoveries):
    tree, cfg = rapl
    with track(config=cfg) as outer:
        tree.advance(PKG, 10)
        with track(config=cfg) as inner:
            tree.advance(PKG, 5)
        tree.advance(PKG, 1)
    assert inner.result.energy_j == pytest.approx(5, abs=1e-4)
    assert outer.result.energy_j == pytest.approx(16, abs=1e-4)

    a = track(config=cfg).start()  # a: 2 + 3, b: 3 + 7, neither nested in the other
    tree.advance(PKG, 2)
    b = track(config=cfg).start()
    tree.advance(PKG, 3)
    assert a.stop().energy_j == pytest.approx(5, abs=1e-4)
    tree.advance(PKG, 7)
    assert b.stop().energy_j == pytest.approx(10, abs=1e-4)
    assert len(discoveries) == 1


def test_a_changed_configuration_discovers_again(rapl, discoveries, tmp_path):
    tree, cfg = rapl
    with track(config=cfg):
        pass
    with track(config=cfg, region="DE"):  # the grid is no input of discovery
        pass
    assert len(discoveries) == 1
    other = tmp_path / "other.yaml"
    other.write_text(f"paths: {{sysfs: {tmp_path / 'sys'}}}\n"
                     "probes: {disabled: [nvml, ram_model, platform_model, cpu_model]}\n")
    with track(config=other) as t:
        tree.advance(PKG, 2)
    assert len(discoveries) == 2 and t.result.energy_j == pytest.approx(2, abs=1e-4)


def test_a_probe_that_fails_is_discovered_again(rapl, discoveries):
    """A counter that cannot be read during a measurement (a driver reloaded, a zone gone):
    the next measurement discovers the probes again, as a restarted process would."""
    tree, cfg = rapl
    with track(config=cfg) as t:
        tree.write_raw(PKG, "energy_uj", "garbage")
    assert t.result.energy_j == 0  # nothing read after the start
    tree.advance(PKG, 1)  # the driver writes its counter again
    with track(config=cfg) as t:
        tree.advance(PKG, 3)
    assert t.result.energy_j == pytest.approx(3, abs=1e-4)
    assert len(discoveries) == 2
    with track(config=cfg):  # all read well: the new discovery is kept
        pass
    assert len(discoveries) == 2
