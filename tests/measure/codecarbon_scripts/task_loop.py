"""Tasks in a loop that reuses one name; the first task starts the tracker."""

import time

from codecarbon import OfflineEmissionsTracker

tracker = OfflineEmissionsTracker(country_iso_code="CAN", region="quebec",
                                  project_name="loop", measure_power_secs=1)
for step in range(3):
    tracker.start_task("step")
    if step == 0:
        tracker.start()  # already started by the task: a warning, nothing else
    time.sleep(0.3)
    data = tracker.stop_task()
    assert data.duration > 0.2 and data.energy_consumed > 0, data
    print(f"step {step}: {data.energy_consumed:.3e} kWh, {data.emissions:.3e} kg")
assert tracker.stop_task() is None  # nothing runs any more
tracker.stop()
