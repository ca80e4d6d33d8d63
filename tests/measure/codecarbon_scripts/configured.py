"""Settings from .codecarbon.config files and CODECARBON_* variables, none in the script."""

import time

from codecarbon import OfflineEmissionsTracker

tracker = OfflineEmissionsTracker(country_iso_code="FRA")
tracker.start()
time.sleep(0.3)
tracker.stop()
