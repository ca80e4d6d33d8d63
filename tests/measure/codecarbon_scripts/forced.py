"""Forced CPU and RAM power and a forced grid intensity: the same inputs for both tools."""

import time

from codecarbon import OfflineEmissionsTracker

tracker = OfflineEmissionsTracker(
    project_name="forced", force_cpu_power=40, force_ram_power=20,
    force_carbon_intensity_g_co2e_kwh=250, pue=1.2, wue=1.5, measure_power_secs=60)
tracker.start()
time.sleep(2)
tracker.stop()
