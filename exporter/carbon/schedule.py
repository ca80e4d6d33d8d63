"""An intensity that follows the local clock: an operator's hour-of-day profile.

Some sites publish how their supply's intensity varies over the day (a PPA that covers the
daytime, a night tariff from a cleaner source). The profile is in local time, so the hour
is taken from the wall clock in the named IANA time zone, not from a fixed UTC offset:
across daylight saving time, each real hour is priced at the value of the local hour it
falls in. The spring hour that does not exist on the wall is simply never used; the
autumn hour that occurs twice is used twice, once per real hour.
"""

from __future__ import annotations

import time
import zoneinfo
from collections.abc import Callable
from datetime import datetime

from carbonmeter import config
from carbonmeter.carbon.intensity import Intensity


class Schedule:
    """IntensitySource whose value is the profile's entry for the local weekday and hour."""

    def __init__(self, cfg: config.ScheduleConfig, *, region: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.tz = zoneinfo.ZoneInfo(cfg.timezone)
        self.clock = clock  # seconds since the epoch; tests pass their own
        days = cfg.days or {}
        # 7 x 24 Intensity objects made once; current() only looks one up.
        self._week = tuple(
            tuple(Intensity(value, region, "schedule",
                            f"carbon.schedule, {day} {hour:02d}:00-{hour:02d}:59 "
                            f"{cfg.timezone}")
                  for hour, value in enumerate(days.get(day, cfg.hours)))
            for day in config.WEEKDAYS)

    def at(self, unix: float) -> Intensity:
        local = datetime.fromtimestamp(unix, self.tz)
        return self._week[local.weekday()][local.hour]

    def current(self) -> Intensity:
        return self.at(self.clock())
