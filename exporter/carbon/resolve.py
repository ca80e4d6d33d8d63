"""Which intensity the configuration asks for, resolved once at start.

Live providers (`carbonmeter.carbon.providers`) fall back to what is resolved here.
"""

from __future__ import annotations

from carbonmeter.carbon.intensity import (
    WORLD_AVERAGE_G_PER_KWH,
    WORLD_AVERAGE_SOURCE,
    Intensity,
    IntensitySource,
    Static,
)
from carbonmeter.carbon.regions import find_cloud, find_region, mix_intensity
from carbonmeter.carbon.schedule import Schedule
from carbonmeter.config import CarbonConfig, ConfigError


def resolve(cfg: CarbonConfig) -> IntensitySource:
    """The configured intensity without live providers, which fall back to it: a fixed
    value, else a schedule, else a mix, else a cloud or grid region, else the world."""
    region = cfg.region
    grid = find_region(region) if region is not None else None  # unknown names fail here
    cloud = find_cloud(cfg.cloud.provider, cfg.cloud.region) if cfg.cloud is not None else None
    if cfg.intensity_g_per_kwh is not None:
        return Static(Intensity(cfg.intensity_g_per_kwh, region or "custom", "config",
                                "carbon.intensity_g_per_kwh in the configuration"))
    if cfg.schedule is not None:
        label = (grid.code if grid else f"{cloud.provider}/{cloud.code}" if cloud
                 else "schedule")
        return Schedule(cfg.schedule, region=label)
    if cfg.mix is not None:
        missing = sorted(set(cfg.mix) - set(cfg.source_intensities))
        if missing:
            raise ConfigError(f"carbon.mix: no intensity for {', '.join(missing)}; "
                              "add them under carbon.source_intensities")
        value = mix_intensity(cfg.mix, cfg.source_intensities)
        return Static(Intensity(round(value, 3), region or "custom", "config",
                                "carbon.mix weighted by carbon.source_intensities"))
    if cloud is not None:
        return Static(Intensity(cloud.g_per_kwh, f"{cloud.provider}/{cloud.code}", "bundled",
                                cloud.source, cloud.year))
    if grid is not None:
        return Static(Intensity(grid.g_per_kwh, grid.code, "bundled", grid.source, grid.year))
    return Static(Intensity(WORLD_AVERAGE_G_PER_KWH, "world", "default", WORLD_AVERAGE_SOURCE,
                            2019))
