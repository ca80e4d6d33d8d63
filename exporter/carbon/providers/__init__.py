"""Live carbon intensity providers, configured under carbon.providers.

`build()` turns the configuration into pollers, checking secrets and paths so a mistake
stops the process before anything starts; `start()` wraps them, with the static intensity
as the fallback, into the IntensitySource the sampler asks. Importing this package loads
urllib (and ssl), so the exporter imports it only when providers are configured.
"""

from __future__ import annotations

from carbonmeter import config
from carbonmeter.carbon.intensity import IntensitySource
from carbonmeter.carbon.providers.http import secret
from carbonmeter.carbon.providers.live import Fetcher, LiveSource, Poller

# How long a value is kept before asking again, by default: the service's data period.
DEFAULT_REFRESH = {
    "electricitymaps": 300.0,  # hourly data, re-estimated within the hour
    "watttime": 300.0,  # MOER every 5 minutes
    "carbonintensity_uk": 1800.0,  # half-hourly settlement periods
    "http": 300.0,
    "file": 5.0,  # a local stat(); parsed only when it changed
}


def make(cfg: config.ProviderConfig, where: str) -> Fetcher:
    name = cfg.name or cfg.type
    key = secret(where, cfg.secret_env, cfg.secret_file)
    if cfg.type == "electricitymaps":
        from carbonmeter.carbon.providers.electricitymaps import ElectricityMaps

        assert key is not None
        return ElectricityMaps(cfg, name, key)
    if cfg.type == "watttime":
        from carbonmeter.carbon.providers.watttime import WattTime

        assert key is not None
        return WattTime(cfg, name, key)
    if cfg.type == "carbonintensity_uk":
        from carbonmeter.carbon.providers.carbonintensity_uk import CarbonIntensityUK

        return CarbonIntensityUK(cfg, name)
    if cfg.type == "http":
        from carbonmeter.carbon.providers.http_json import HttpJson

        return HttpJson(cfg, name, key, where)
    from carbonmeter.carbon.providers.file import FileProvider

    return FileProvider(cfg, name, where)


def build(cfgs: list[config.ProviderConfig], origin: str) -> list[Poller]:
    """One poller per configured provider; ConfigError for a missing secret or bad path."""
    return [Poller(make(c, f"{origin}: carbon.providers[{i}]"),
                   refresh=c.refresh_seconds or DEFAULT_REFRESH[c.type],
                   staleness=c.staleness_seconds)
            for i, c in enumerate(cfgs)]


def start(cfgs: list[config.ProviderConfig], origin: str, fallback: IntensitySource) -> LiveSource:
    live = LiveSource(build(cfgs, origin), fallback)
    live.start()
    return live
