"""Apple Silicon through powermetrics: incremental parsing of the NUL-separated plist stream,
both sample shapes, and the probe driving a fake `powermetrics` on PATH that streams a
recorded-format stream (tests/fakes/fake_powermetrics.py, tests/fixtures/powermetrics.py)."""

from __future__ import annotations

import os
import plistlib
import time
from pathlib import Path

import pytest

from carbonmeter.probes.base import ProbeUnavailable
from carbonmeter.probes.powermetrics import (
    SUDOERS_LINE,
    PowermetricsProbe,
    parse_samples,
    sample_energy_mj,
    split_samples,
)
from tests.fixtures.powermetrics import document, monterey, sonoma, stream
from tests.helpers import fake_executable, wait_for

FAKES = Path(__file__).resolve().parents[1] / "fakes"
SAMPLES = [sonoma(0, cpu_mw=1200.5, gpu_mw=300.25, ane_mw=0.0),
           sonoma(1, cpu_mw=4100.0, gpu_mw=8000.0, ane_mw=50.0, elapsed_ns=1_004_000_000),
           sonoma(2, cpu_mw=900.0, gpu_mw=100.0, ane_mw=0.0, elapsed_ns=998_500_000)]


def expected_uj(samples) -> dict[str, int]:
    totals: dict[str, float] = {}
    for s in samples:
        for comp, mj in sample_energy_mj(s).items():
            totals[comp] = totals.get(comp, 0.0) + mj
    return {comp: round(mj * 1000) for comp, mj in totals.items()}


def test_every_split_of_the_stream_yields_the_same_samples() -> None:
    """Wherever a pipe read ends, a sample is parsed once, whole, when its end arrives."""
    data = stream(SAMPLES[:2])
    whole = [document(s).rstrip(b"\n") for s in SAMPLES[:2]]
    for cut in range(1, len(data)):
        first, rest = split_samples(data[:cut])
        second, tail = split_samples(rest + data[cut:])
        assert first + second == whole and tail == b"", cut
    assert [plistlib.loads(d)["elapsed_ns"] for d in whole] == [1_000_000_000, 1_004_000_000]


def test_energy_of_a_macos_14_sample_is_mean_power_times_elapsed() -> None:
    e = sample_energy_mj(sonoma(1, cpu_mw=4100.0, gpu_mw=8000.0, ane_mw=50.0,
                                elapsed_ns=1_004_000_000))
    assert e == pytest.approx({"cpu": 4116.4, "gpu": 8032.0, "ane": 50.2})


def test_energy_of_a_macos_12_sample_is_its_energy_keys() -> None:
    """combined_power and package_energy contain the rest and are never counted."""
    e = sample_energy_mj(monterey(0, cpu_mj=947, gpu_mj=153, ane_mj=0, dram_mj=220))
    assert e == {"cpu": 947.0, "gpu": 153.0, "ane": 0.0, "dram": 220.0}


@pytest.fixture
def fake_powermetrics(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_executable(bin_dir, "powermetrics", FAKES / "fake_powermetrics.py")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def use(samples) -> None:
        path = tmp_path / "stream.bin"
        path.write_bytes(stream(samples))
        monkeypatch.setenv("FAKE_POWERMETRICS_STREAM", str(path))

    return use


def make(interval_ms: float = 100, **kw) -> PowermetricsProbe:
    return PowermetricsProbe(command="powermetrics", interval_ms=interval_ms, system="darwin",
                             machine="arm64", **kw)


def test_probe_counts_every_sample_exactly_across_pipe_boundaries(fake_powermetrics) -> None:
    fake_powermetrics(SAMPLES)
    probe = make()
    partial_seen = False
    try:
        assert [(d.id, d.kind) for d in probe.devices] == [("cpu", "cpu"), ("gpu", "gpu"),
                                                          ("ane", "other")]

        def all_read() -> bool:
            nonlocal partial_seen
            result = probe.read()
            assert result.errors == []
            partial_seen |= bool(probe._buffer)  # a read that ended inside a sample
            got = {r.device.id: r.counter_uj for r in result.readings}
            return got == expected_uj(SAMPLES)

        wait_for(all_read, timeout=10, every=0.01, what="all three samples counted")
        assert partial_seen
    finally:
        probe.close()


def test_macos_12_stream_adds_dram(fake_powermetrics, monkeypatch) -> None:
    """macOS 12: no ane_power sampler (cpu_power reports the ANE), energy keys, and DRAM."""
    samples = [monterey(i, cpu_mj=900 + i, gpu_mj=100, ane_mj=5, dram_mj=60) for i in range(2)]
    fake_powermetrics(samples)
    monkeypatch.setenv("FAKE_POWERMETRICS_NO_ANE", "1")
    probe = make()
    try:
        wait_for(lambda: {r.device.id: r.counter_uj for r in probe.read().readings}
                 == expected_uj(samples), timeout=10, what="both samples counted")
        assert [d.kind for d in probe.devices] == ["cpu", "gpu", "other", "dram"]
    finally:
        probe.close()


def test_a_process_that_dies_is_reported_restarted_and_counters_go_on(fake_powermetrics,
                                                                       monkeypatch) -> None:
    fake_powermetrics(SAMPLES[:2])
    monkeypatch.setenv("FAKE_POWERMETRICS_EXIT_AFTER", "1")
    probe = make(interval_ms=400)  # fails after its first sample, once past start-up
    errors: list[str] = []
    counters: list[int] = []
    try:
        def twice() -> bool:
            result = probe.read()
            errors.extend(result.errors)
            counters.extend(r.counter_uj for r in result.readings if r.device.id == "cpu")
            return len([e for e in errors if "unable to sample" in e]) >= 2
        wait_for(twice, timeout=10, every=0.02, what="two failures")
        assert "starting it again" in errors[0]
        assert counters == sorted(counters) and counters[-1] == 2 * expected_uj(SAMPLES[:1])["cpu"]
    finally:
        probe.close()


def test_without_root_it_says_which_sudoers_line_allows_it(fake_powermetrics, tmp_path: Path,
                                                           monkeypatch) -> None:
    """Not root: the probe runs `sudo -n powermetrics`; sudo without a NOPASSWD rule refuses
    at once (a fake sudo answering as sudo -n does), and the message gives the line."""
    fake_powermetrics(SAMPLES)
    sudo = tmp_path / "bin" / "sudo"
    sudo.write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    sudo.chmod(0o755)
    with pytest.raises(ProbeUnavailable) as e:
        make(euid=501)
    assert "needs root (sudo: a password is required)" in str(e.value)
    assert SUDOERS_LINE in str(e.value) and SUDOERS_LINE == (
        "%admin ALL=(root) NOPASSWD: /usr/bin/powermetrics")


def test_powermetrics_own_refusal_is_explained(fake_powermetrics, monkeypatch) -> None:
    fake_powermetrics(SAMPLES)
    monkeypatch.setenv("FAKE_POWERMETRICS_UNPRIVILEGED", "1")
    start = time.monotonic()
    with pytest.raises(ProbeUnavailable, match=r"invoked as the superuser.*NOPASSWD"):
        make()
    assert time.monotonic() - start < 2


def test_not_on_linux_nor_intel_macs() -> None:
    with pytest.raises(ProbeUnavailable, match="macOS"):
        PowermetricsProbe(system="linux")
    with pytest.raises(ProbeUnavailable, match="Intel Mac"):
        PowermetricsProbe(system="darwin", machine="x86_64")


def test_a_damaged_sample_is_skipped_and_said() -> None:
    broken = document(SAMPLES[0]).replace(b"<real>", b"<rea>", 1)
    docs, rest = split_samples(broken + b"\0" + document(SAMPLES[1]))
    samples, errors = parse_samples(docs)
    assert [s["elapsed_ns"] for s in samples] == [1_004_000_000] and rest == b""
    assert len(errors) == 1 and "skipped a sample that is not a plist" in errors[0]
