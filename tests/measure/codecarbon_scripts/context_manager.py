"""The online tracker as a context manager, its results read after the block."""

import time

from codecarbon import EmissionsTracker

with EmissionsTracker(project_name="context", measure_power_secs=1) as tracker:
    time.sleep(0.5)

data = tracker.final_emissions_data
assert tracker.final_emissions == data.emissions >= 0
print(f"{data.emissions * 1000:.6f} g CO2eq in {data.duration:.1f} s, "
      f"{data.energy_consumed:.3e} kWh")
