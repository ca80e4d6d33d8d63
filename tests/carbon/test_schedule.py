"""Hour-of-day schedules in a named time zone, across both daylight saving time changes.

The clock is injected (seconds since the epoch), so each test walks real UTC instants
through days whose local length is 23 or 25 hours, using the system's tz database
(or the tzdata package) exactly as the exporter does.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from carbonmeter import config
from carbonmeter.carbon.resolve import resolve
from carbonmeter.carbon.schedule import Schedule
from carbonmeter.config import ConfigError

TENS = [10.0 * h for h in range(24)]  # the value says the local hour: 10 x hour


def schedule(tz: str, days: dict | None = None, region: str | None = None) -> Schedule:
    entry = {"timezone": tz, "hours": TENS}
    if days:
        entry["days"] = days
    overrides = {"carbon.schedule": entry}
    if region:
        overrides["carbon.region"] = region
    source = resolve(config.load(env={}, overrides=overrides).carbon)
    assert isinstance(source, Schedule)
    return source


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def hourly(s: Schedule, start: float, hours: int) -> list[float]:
    """The value in the middle of each real hour from `start`."""
    return [s.at(start + 3600 * i + 1800).g_per_kwh for i in range(hours)]


@pytest.mark.parametrize(("tz", "local_midnight_utc", "real_hours", "skipped", "total"), [
    # Paris, 31 March 2024: 02:00 CET becomes 03:00 CEST at 01:00 UTC; the day has 23 hours
    # and local hour 2 never happens: sum = 10 x (0 + ... + 23) - 20 = 2760 - 20.
    ("Europe/Paris", utc(2024, 3, 30, 23), 23, 20.0, 2740.0),
    # New York, 10 March 2024: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
    ("America/New_York", utc(2024, 3, 10, 5), 23, 20.0, 2740.0),
])
def test_spring_forward_skips_the_missing_hour(tz, local_midnight_utc, real_hours, skipped,
                                               total):
    s = schedule(tz)
    values = hourly(s, local_midnight_utc, real_hours)
    assert skipped not in values
    assert values == [v for v in TENS if v != skipped]
    assert sum(values) == total
    assert s.at(local_midnight_utc + 3600 * real_hours + 60).g_per_kwh == 0.0  # next midnight


@pytest.mark.parametrize(("tz", "local_midnight_utc", "repeated", "total"), [
    # Paris, 27 October 2024: 03:00 CEST becomes 02:00 CET at 01:00 UTC; 02:xx occurs twice,
    # so the 25-hour day sums 2760 + 20.
    ("Europe/Paris", utc(2024, 10, 26, 22), 20.0, 2780.0),
    # New York, 3 November 2024: 02:00 EDT becomes 01:00 EST at 06:00 UTC; 01:xx twice.
    ("America/New_York", utc(2024, 11, 3, 4), 10.0, 2770.0),
])
def test_fall_back_prices_the_repeated_hour_twice(tz, local_midnight_utc, repeated, total):
    s = schedule(tz)
    values = hourly(s, local_midnight_utc, 25)
    assert values.count(repeated) == 2
    assert sorted(values) == sorted([*TENS, repeated])
    assert sum(values) == total


def test_transition_instants_to_the_second():
    paris = schedule("Europe/Paris")
    jump = utc(2024, 3, 31, 1)  # 01:59:59 CET, then 03:00:00 CEST
    assert paris.at(jump - 1).g_per_kwh == 10.0 and paris.at(jump).g_per_kwh == 30.0
    back = utc(2024, 10, 27, 1)  # 02:59:59 CEST, then 02:00:00 CET again
    assert paris.at(back - 1).g_per_kwh == 20.0 and paris.at(back).g_per_kwh == 20.0
    assert paris.at(back + 3600).g_per_kwh == 30.0
    ny = schedule("America/New_York")
    jump = utc(2024, 3, 10, 7)  # 01:59:59 EST, then 03:00:00 EDT
    assert ny.at(jump - 1).g_per_kwh == 10.0 and ny.at(jump).g_per_kwh == 30.0
    back = utc(2024, 11, 3, 6)  # 01:59:59 EDT, then 01:00:00 EST
    assert ny.at(back - 1).g_per_kwh == 10.0 and ny.at(back).g_per_kwh == 10.0


def test_weekday_profiles_follow_the_local_date_not_utc():
    sunday = [5.0] * 24
    paris = schedule("Europe/Paris", days={"sun": sunday})
    # Saturday 23:30 UTC is already Sunday 00:30 in Paris (and the DST day at that).
    assert paris.at(utc(2024, 3, 30, 23, 30)).g_per_kwh == 5.0
    assert paris.at(utc(2024, 3, 30, 22, 30)).g_per_kwh == 230.0  # Saturday 23:30 local
    assert paris.at(utc(2024, 3, 31, 22, 30)).g_per_kwh == 0.0  # Monday 00:30 CEST
    ny = schedule("America/New_York", days={"sun": sunday})
    # Sunday 03:30 UTC is still Saturday 22:30 in New York.
    assert ny.at(utc(2024, 3, 10, 3, 30)).g_per_kwh == 220.0
    assert ny.at(utc(2024, 3, 10, 5, 30)).g_per_kwh == 5.0


def test_current_reads_the_injected_clock_and_labels():
    s = schedule("Asia/Kolkata", region="IN")  # UTC+05:30, no DST: a half-hour offset
    s.clock = lambda: utc(2024, 6, 1, 3, 45)  # 09:15 local
    i = s.current()
    assert (i.g_per_kwh, i.region, i.provider) == (90.0, "IN", "schedule")
    assert i.source == "carbon.schedule, sat 09:00-09:59 Asia/Kolkata"
    assert schedule("UTC").at(utc(2024, 6, 1, 3)).region == "schedule"


def test_a_year_of_hours_in_paris_is_every_real_hour_once():
    """8784 real hours of 2024 (a leap year): local hours 0..23 all appear, 2 once less in
    March and once more in October, so hour 2 appears 366 times in total."""
    s = schedule("Europe/Paris")
    start = datetime(2024, 1, 1, tzinfo=timezone.utc) - timedelta(hours=1)  # local midnight
    values = hourly(s, start.timestamp(), 8784)
    assert values.count(20.0) == 366 and values.count(30.0) == 366
    assert all(values.count(10.0 * h) == 366 for h in range(24))


@pytest.mark.parametrize(("entry", "error"), [
    ({"timezone": "Europe/Pariss", "hours": TENS},
     r"carbon.schedule.timezone: unknown time zone 'Europe/Pariss'; use an IANA"),
    ({"timezone": "Europe/Paris", "hours": TENS[:23]},
     r"carbon.schedule.hours: must be a list of 24 values, got 23"),
    ({"timezone": "Europe/Paris", "hours": [*TENS[:23], "high"]},
     r"carbon.schedule.hours\[23\]: must be a number"),
    ({"timezone": "Europe/Paris", "hours": [*TENS[:23], -1]},
     r"carbon.schedule.hours\[23\]: -1 is out of range from 0 to 5000"),
    ({"timezone": "Europe/Paris", "hours": TENS, "days": {"sunday": TENS}},
     r"carbon.schedule.days: unknown key 'sunday'"),
    ({"timezone": "Europe/Paris", "hours": TENS, "days": {"sun": [1, 2]}},
     r"carbon.schedule.days.sun: must be a list of 24 values, got 2"),
    ({"hours": TENS}, r"carbon.schedule: missing key 'timezone' \(required: timezone, hours\)"),
    ({"timezone": "UTC", "hours": TENS, "tz": "x"}, r"carbon.schedule: unknown key 'tz'"),
])
def test_schedule_errors_name_the_key(tmp_path, entry, error):
    import yaml

    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump({"carbon": {"schedule": entry}}))
    with pytest.raises(ConfigError, match=error) as e:
        config.load(path, env={})
    assert str(e.value).startswith(f"{path}: ")


def test_fixed_intensity_beats_the_schedule_and_the_schedule_beats_mix_and_region():
    base = {"carbon.schedule": {"timezone": "UTC", "hours": TENS}}
    fixed = resolve(config.load(env={}, overrides={
        **base, "carbon.intensity_g_per_kwh": 7}).carbon)
    assert fixed.current().g_per_kwh == 7.0
    s = resolve(config.load(env={}, overrides={
        **base, "carbon.mix": {"coal": 1}, "carbon.region": "PL"}).carbon)
    assert isinstance(s, Schedule) and s.current().region == "PL"


def test_works_without_a_system_tz_database():
    """Windows and slim images have no /usr/share/zoneinfo: the tzdata package stands in.
    PYTHONTZPATH="" makes zoneinfo ignore the system's database, as it would be there."""
    import os
    import subprocess
    import sys

    jump = utc(2024, 3, 10, 7)
    code = ("import zoneinfo; from carbonmeter import config; "
            "from carbonmeter.carbon.resolve import resolve; "
            "assert zoneinfo.TZPATH == (); "
            "s = resolve(config.load(env={}, overrides={'carbon.schedule': "
            "{'timezone': 'America/New_York', 'hours': [10.0 * h for h in range(24)]}}).carbon);"
            f"print(s.at({jump} - 1).g_per_kwh, s.at({jump}).g_per_kwh)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONTZPATH": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["10.0", "30.0"]


def test_the_label_is_the_configured_grid_or_cloud_region():
    cloud = {"provider": "aws", "region": "eu-west-3"}
    s = resolve(config.load(env={}, overrides={
        "carbon.schedule": {"timezone": "UTC", "hours": TENS}, "carbon.cloud": cloud}).carbon)
    assert s.current().region == "aws/eu-west-3"
