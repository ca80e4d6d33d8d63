"""Three threads, each measured by a tracker of its own, all writing one emissions.csv."""

import threading
import time

from codecarbon import OfflineEmissionsTracker


def job(seconds: float) -> None:
    tracker = OfflineEmissionsTracker(country_iso_code="FRA", project_name="threads",
                                      measure_power_secs=1)
    tracker.start()
    try:
        time.sleep(seconds)
    finally:
        tracker.stop()


threads = [threading.Thread(target=job, args=(0.5 + i * 0.25,)) for i in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
