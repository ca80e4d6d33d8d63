"""Emissions sent to a Python logger (a file), beside the CSV."""

import logging
import time

from codecarbon import OfflineEmissionsTracker
from codecarbon.output import LoggerOutput

emissions_logger = logging.getLogger("emissions")
emissions_logger.addHandler(logging.FileHandler("emissions.log"))
emissions_logger.setLevel(logging.INFO)

tracker = OfflineEmissionsTracker(country_iso_code="FRA", project_name="logged",
                                  save_to_logger=True,
                                  logging_logger=LoggerOutput(emissions_logger, logging.INFO),
                                  measure_power_secs=1)
tracker.start()
time.sleep(0.5)
tracker.stop()
