"""A data centre's PUE and WUE, with a flush half way."""

import time

from codecarbon import OfflineEmissionsTracker

tracker = OfflineEmissionsTracker(country_iso_code="FRA", project_name="datacentre",
                                  pue=1.4, wue=1.8, measure_power_secs=1)
tracker.start()
time.sleep(0.5)
half = tracker.flush()
time.sleep(0.5)
whole = tracker.stop()
assert 0 < half < whole, (half, whole)
data = tracker.final_emissions_data
assert abs(data.water_consumed - data.energy_consumed * 1.8) <= 1e-12 + 1e-9 * data.water_consumed
