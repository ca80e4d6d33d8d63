"""estimate_host_watts: the parts of a machine's power, each case computed from the bundled table.

The expected figures are worked out here from the rows of config/power_model.csv and
config/power_params.csv with the formulas the README's methodology states, not by calling the
model's code; TDPs are those of config/cpu_tdp.csv (Intel ARK, AMD product pages).
"""

from __future__ import annotations

import math

import pytest

from carbonmeter.probes.cpu_generations import generation_from_number, generation_from_signature
from carbonmeter.probes.cpu_model import estimate_cpu_watts, estimate_host, estimate_host_watts
from tests.fixtures.tables import rows

ROWS = {r["generation"]: {k: float(v) for k, v in r.items() if k.startswith(("tdp_", "thread_",
                                                                              "platform_"))}
        for r in rows("power_model.csv")}
PARAMS = {r["name"]: r["value"] for r in rows("power_params.csv")}
M = float(PARAMS["ram_w_per_gb"])
P_IDLE = float(PARAMS["platform_idle_w_per_socket"])
P_FULL = float(PARAMS["platform_full_w_per_socket"])


def lerp(row: dict[str, float], name: str, load: float) -> float:
    """A figure at `load`, linear between its idle and full columns (tdp_idle, tdp_full ...)."""
    unit = "" if name == "tdp" else "_w"
    idle, full = row[f"{name}_idle{unit}"], row[f"{name}_full{unit}"]
    return idle + load * (full - idle)


@pytest.mark.parametrize("load", [0.0, 0.25, 1.0])
def test_bare_metal_with_a_known_tdp(load: float) -> None:
    # 2 x AMD EPYC 7763 (280 W, 3rd generation), 256 threads, 512 GB
    row = ROWS["amd-epyc-gen3"]
    parts = estimate_host_watts("AMD EPYC 7763 64-Core Processor", sockets=2, threads=256,
                                memory_gb=512, load=load)
    assert parts["cpu"] == pytest.approx(2 * 280 * lerp(row, "tdp", load))
    assert parts["ram"] == pytest.approx(512 * M)
    assert parts["platform"] == pytest.approx(2 * (P_IDLE + load * (P_FULL - P_IDLE)))


def test_bare_metal_of_unknown_tdp_is_priced_per_thread_of_its_generation() -> None:
    # Not in the TDP table, but cpu family 25 model 0x11 is Zen 4 (Genoa).
    est = estimate_host("AMD EPYC", sockets=1, threads=192, memory_gb=384, load=0.5,
                        cpu_family=25, cpu_model=0x11)
    assert est.case == "generation" and est.figures.generation == "amd-epyc-gen4"
    assert est.tdp_watts is None
    assert est.parts["cpu"] == pytest.approx(192 * lerp(ROWS["amd-epyc-gen4"], "thread", 0.5))


def test_bare_metal_of_no_known_generation_takes_the_default_row() -> None:
    est = estimate_host("Mystery CPU", sockets=1, threads=8, memory_gb=16, load=1.0)
    assert est.case == "default" and est.figures.generation == "*"
    assert est.parts["cpu"] == pytest.approx(8 * ROWS["*"]["thread_full_w"])
    assert est.error == (float(PARAMS["error_default_idle"]), float(PARAMS["error_default_full"]))


def test_a_guest_is_its_share_of_a_host_never_the_package() -> None:
    # The VM: 2 vCPUs, the name says only "AMD EPYC", cpu family 26 (Zen 5), 23.5 GiB.
    est = estimate_host("AMD EPYC", sockets=1, threads=2, memory_gb=23.5, load=1.0,
                        virtual=True, cpu_family=26, cpu_model=2)
    row = ROWS["amd-epyc-gen5"]
    assert est.case == "guest" and est.tdp_watts is None
    assert est.parts["cpu"] == pytest.approx(2 * row["thread_full_w"])
    assert est.parts["platform"] == pytest.approx(2 * row["platform_thread_full_w"])
    assert est.parts["ram"] == pytest.approx(23.5 * M)
    # Named, the same guest is still priced by its vCPUs, not the 500 W of an EPYC 9965.
    named = estimate_host_watts("AMD EPYC 9965 192-Core Processor", sockets=1, threads=2,
                                memory_gb=23.5, load=1.0, virtual=True)
    assert named == est.parts
    assert sum(named.values()) < 10


def test_guest_of_unknown_generation_and_error_bars() -> None:
    est = estimate_host("Common KVM processor", sockets=1, threads=4, memory_gb=8, load=0.0,
                        virtual=True)
    assert est.case == "guest_default"
    assert est.parts["cpu"] == pytest.approx(4 * ROWS["*"]["thread_idle_w"])
    idle, full = (float(PARAMS["error_guest_default_idle"]),
                  float(PARAMS["error_guest_default_full"]))
    assert est.relative_error(0.0) == idle and est.relative_error(1.0) == full
    assert est.relative_error(0.5) == pytest.approx((idle + full) / 2)


def test_configured_tdp_overrides_the_table() -> None:
    est = estimate_host("Mystery CPU", sockets=2, threads=16, memory_gb=32, load=1.0,
                        tdp_watts=90.0)
    assert est.case == "tdp" and est.parts["cpu"] == pytest.approx(90 * ROWS["*"]["tdp_full"])


def test_parts_rise_with_load_and_stay_positive() -> None:
    for name, virtual in (("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", False),
                          ("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", True), ("", False)):
        values = [sum(estimate_host_watts(name, sockets=2, threads=80, memory_gb=192,
                                          load=x / 10, virtual=virtual).values())
                  for x in range(11)]
        assert values == sorted(values) and values[0] > 0, name


@pytest.mark.parametrize("bad", [
    {"load": math.nan}, {"load": 1.5}, {"threads": 0}, {"sockets": 0}, {"memory_gb": -1},
])
def test_refuses_impossible_inputs(bad: dict) -> None:
    args = {"sockets": 1, "threads": 4, "memory_gb": 8, "load": 0.5} | bad
    with pytest.raises(ValueError):
        estimate_host_watts("Intel Xeon Gold 6148", **args)


def test_package_curve_is_linear_between_the_tables_shares() -> None:
    row = ROWS["intel-icelake"]
    for load in (0.0, 0.3, 1.0):
        assert estimate_cpu_watts(200.0, load, generation="intel-icelake") == pytest.approx(
            200 * lerp(row, "tdp", load))
    assert estimate_cpu_watts(100.0, 1.0) == pytest.approx(100 * ROWS["*"]["tdp_full"])
    # a jiffy of overshoot per CPU is clamped; more is refused
    assert estimate_cpu_watts(100.0, 1.002, threads=4) == estimate_cpu_watts(100.0, 1.0)
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        estimate_cpu_watts(100.0, 1.5, threads=4)


@pytest.mark.parametrize(("family", "model", "generation"), [
    (6, 0x55, "intel-cascadelake"), (6, 0x6A, "intel-icelake"), (6, 0x8F, "intel-sapphirerapids"),
    (6, 0xCF, "intel-emeraldrapids"), (6, 0xAD, "intel-graniterapids"), (6, 0x4F,
                                                                         "intel-broadwell"),
    (23, 0x01, "amd-epyc-gen1"), (23, 0x31, "amd-epyc-gen2"), (25, 0x01, "amd-epyc-gen3"),
    (25, 0x11, "amd-epyc-gen4"), (25, 0xA0, "amd-epyc-gen4"), (26, 0x11, "amd-epyc-gen5"),
    (6, 0xAF, None),  # Sierra Forest: no list of its own, so no guess
    (15, 0x06, None),
])
def test_generation_from_family_and_model(family: int, model: int,
                                          generation: str | None) -> None:
    assert generation_from_signature(family, model) == generation


@pytest.mark.parametrize(("name", "generation"), [
    ("AMD EPYC 9754 128-Core Processor", "amd-epyc-gen4"),  # Bergamo: in no CCF list
    ("AMD EPYC 72F3 8-Core Processor", "amd-epyc-gen3"),
    ("AMD EPYC 7H12 64-Core Processor", "amd-epyc-gen2"),
    ("Intel(R) Xeon(R) Gold 5318Y CPU @ 2.10GHz", "intel-icelake"),
    ("Intel Xeon Platinum 8380HL", "intel-cascadelake"),  # Cooper Lake
    ("Intel(R) Xeon(R) Platinum 8592+", "intel-emeraldrapids"),
    ("Intel(R) Xeon(R) 6980P", "intel-graniterapids"),
    ("Intel Xeon 8480+", "intel-sapphirerapids"),  # the tier word left out
    ("Intel(R) Xeon(R) CPU E5-2670 0 @ 2.60GHz", None),  # not a Xeon Scalable number
    ("Intel(R) Xeon(R) 6780E", None),  # Sierra Forest
])
def test_generation_from_the_vendors_model_numbers(name: str, generation: str | None) -> None:
    assert generation_from_number(name) == generation


def test_the_readme_examples() -> None:
    def shown(parts: dict[str, float], digits: int) -> dict[str, float]:
        return {k: round(v, digits) for k, v in parts.items()}

    bare = dict(sockets=2, threads=256, memory_gb=512)
    assert shown(estimate_host_watts("AMD EPYC 7763 64-Core Processor", load=1.0, **bare),
                 1) == {"cpu": 470.4, "ram": 51.2, "platform": 40.0}
    assert shown(estimate_host_watts("AMD EPYC 7763 64-Core Processor", load=0.0, **bare),
                 1) == {"cpu": 62.2, "ram": 51.2, "platform": 20.0}
    guest = estimate_host_watts("AMD EPYC", sockets=1, threads=2, memory_gb=8, load=1.0,
                                virtual=True, cpu_family=26, cpu_model=2)
    assert shown(guest, 2) == {"cpu": 3.24, "ram": 0.8, "platform": 0.31}
