"""A decorated function, measured on each call (offline, for a given country)."""

import time

from codecarbon import track_emissions


@track_emissions(project_name="decorated", offline=True, country_iso_code="FRA",
                 measure_power_secs=1)
def train(steps: int) -> int:
    total = 0
    for _ in range(steps):
        total += sum(range(20_000))
        time.sleep(0.1)
    return total


if __name__ == "__main__":
    assert train(5) == 5 * sum(range(20_000))
