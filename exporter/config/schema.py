"""The configuration's shape: one frozen dataclass per section, with each key's limits.

Each key's type and `limits` (min, max, choices, a named check) are what `carbonmeter.config.
checks` applies to it; the defaults are the bundled `default.yaml`. Probes declare their own
sections (`carbonmeter.probes`: each probe's SPEC names its section and settings class), so
`sections()` is the core sections here plus the probes', in the order `config check` prints.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from carbonmeter import probes
from carbonmeter.carbon.intensity import MAX_G_PER_KWH as GRID_MAX
from carbonmeter.config.errors import ConfigError
from carbonmeter.probes.base import limits
from carbonmeter.units import UNITS

ENV_PREFIX = "CARBONMETER_"
MIX_SOURCES = (
    "coal", "oil", "natural_gas", "nuclear", "hydro", "wind", "solar", "biomass",
    "geothermal", "other",
)  # fmt: skip
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
TEMPORALITIES = ("cumulative", "delta")
SECRET = "<hidden>"  # what `config check` prints for passwords and header values
CLOUD_PROVIDERS = ("aws", "azure", "gcp")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
PROVIDER_TYPES = ("electricitymaps", "watttime", "carbonintensity_uk", "http", "file")
MAX_G_PER_KWH = GRID_MAX  # well above any grid; a larger number is a unit mistake
ATTRIBUTION_LEVELS = ("none", "pod", "container", "process")


@dataclass(frozen=True)
class ServerConfig:
    """Section `server`: the HTTP endpoint."""

    listen: str = field(**limits(check="listen"))
    web_config_file: str | None = field(**limits(check="path"))
    healthz_auth: bool


@dataclass(frozen=True)
class SamplerConfig:
    """Section `sampler`: how often every probe is read."""

    interval_seconds: float = field(**limits(min=0.1, max=3600))
    probe_timeout_seconds: float = field(**limits(min=0.01, max=600))


@dataclass(frozen=True)
class StateConfig:
    """Section `state`: the file that keeps totals across restarts; None: none."""

    path: str | None = field(**limits(check="path"))
    checkpoint_seconds: float = field(**limits(min=0.1, max=86_400))


@dataclass(frozen=True)
class LogConfig:
    """Section `log`."""

    level: str = field(**limits(choices=("debug", "info", "warning", "error")))


@dataclass(frozen=True)
class PathsConfig:
    """Section `paths`: the kernel filesystems' roots, so a container can read the host's."""

    sysfs: str = field(**limits(check="path"))
    procfs: str = field(**limits(check="path"))
    devfs: str = field(**limits(check="path"))


@dataclass(frozen=True)
class ProbesConfig:
    """Section `probes`."""

    disabled: list[str] = field(**limits(choices=probes.names()))


@dataclass(frozen=True)
class CloudConfig:
    """A cloud provider's region, priced at its bundled figure."""

    provider: str = field(**limits(choices=CLOUD_PROVIDERS))
    region: str = field(**limits())


@dataclass(frozen=True)
class ScheduleConfig:
    """An hour-of-day profile in a named time zone (operators publish these per site)."""

    timezone: str = field(**limits(check="timezone"))
    hours: list[float] = field(**limits(length=24, min=0, max=MAX_G_PER_KWH))
    days: dict[str, list[float]] | None = field(
        default=None, **limits(keys=WEEKDAYS, length=24, min=0, max=MAX_G_PER_KWH))


@dataclass(frozen=True)
class ProviderConfig:
    """One live intensity source. Which keys a type needs: checks.PROVIDER_NEEDS."""

    type: str = field(**limits(choices=PROVIDER_TYPES))
    name: str | None = None  # the `provider` label; default: the type
    zone: str | None = None
    url: str | None = None
    json_path: str | None = None
    unit: str | None = field(default=None, **limits(choices=UNITS))
    path: str | None = field(default=None, **limits(check="path"))
    headers: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    secret_env: str | None = None
    secret_file: str | None = field(default=None, **limits(check="path"))
    refresh_seconds: float | None = field(default=None, **limits(min=0.05, max=86_400))
    timeout_seconds: float = field(default=10.0, **limits(min=0.05, max=300))
    staleness_seconds: float = field(default=3600.0, **limits(min=0.1, max=30 * 86_400))


@dataclass(frozen=True)
class CarbonConfig:
    """Section `carbon`: the intensity and PUE that price the energy."""

    region: str | None
    cloud: CloudConfig | None
    intensity_g_per_kwh: float | None = field(**limits(min=0, max=MAX_G_PER_KWH))
    schedule: ScheduleConfig | None
    mix: dict[str, float] | None = field(**limits(keys=MIX_SOURCES, min=0))
    source_intensities: dict[str, float] = field(
        **limits(keys=MIX_SOURCES, min=0, max=MAX_G_PER_KWH))
    providers: list[ProviderConfig]
    pue: float = field(**limits(min=1.0, max=10.0))


@dataclass(frozen=True)
class OtlpConfig:
    """Resolved by `carbonmeter.config.otel`: every None left in the file is filled from the
    standard OTEL_* variables or a default, so the sink gets concrete settings."""

    enabled: bool
    endpoint: str = field(**limits(check="url"))
    protocol: str = field(**limits(choices=OTLP_PROTOCOLS))
    headers: dict[str, str] = field(**limits(secret=True))
    insecure: bool
    certificate: str | None = field(**limits(check="file"))
    client_certificate: str | None = field(**limits(check="file"))
    client_key: str | None = field(**limits(check="file"))
    interval_seconds: float = field(**limits(min=0.1, max=3600))
    temporality: str = field(**limits(choices=TEMPORALITIES))
    timeout_seconds: float = field(**limits(min=0.1, max=600))


@dataclass(frozen=True)
class PushgatewayConfig:
    """Section `pushgateway`."""

    url: str | None = field(**limits(check="url"))
    job: str
    instance: str | None
    grouping: dict[str, str] = field(**limits(check="label_name"))
    interval_seconds: float | None = field(**limits(min=0.1, max=3600))
    username: str | None
    password: str | None = field(**limits(secret=True))
    certificate: str | None = field(**limits(check="file"))
    client_certificate: str | None = field(**limits(check="file"))
    client_key: str | None = field(**limits(check="file"))
    timeout_seconds: float = field(**limits(min=0.1, max=600))
    delete_on_exit: bool


@dataclass(frozen=True)
class EmissionsLogConfig:
    """Section `emissions_log`: one row per interval, run or task."""

    path: str | None = field(**limits(check="path"))
    format: str = field(**limits(choices=("csv", "jsonl")))
    project_name: str


@dataclass(frozen=True)
class HardwareConfig:
    """What making one piece of hardware emitted, spread over the years it serves."""

    kg_co2eq: float = field(**limits(min=0, max=1_000_000))
    lifetime_years: float = field(**limits(min=0.01, max=100))


@dataclass(frozen=True)
class EmbodiedConfig:
    """Section `embodied`: hardware whose manufacture is amortised over its lifetime."""

    devices: dict[str, HardwareConfig]


@dataclass(frozen=True)
class AttributionConfig:
    """Section `attribution`: sharing the host's energy among workloads."""

    level: str = field(**limits(choices=ATTRIBUTION_LEVELS))
    scope: str = field(**limits(choices=("node", "self")))
    idle_policy: str = field(**limits(choices=("requests", "equal", "unattributed")))
    idle_watts: dict[str, float] = field(**limits(keys=("cpu", "gpu", "platform"), min=0,
                                                   max=100_000))
    top_n: int = field(**limits(min=1, max=100_000))
    min_energy_joules: float = field(**limits(min=0, max=1e12))
    cgroupfs: str | None = field(**limits(check="path"))
    kubelet_url: str | None
    kubelet_token_file: str = field(**limits(check="path"))
    kubelet_ca_file: str | None = field(**limits(check="path"))
    kubelet_insecure_tls: bool
    downward_api_dir: str | None = field(**limits(check="path"))


@dataclass(frozen=True)
class Config:
    """The whole configuration, checked. Probe sections are in `probe_sections`, by section
    name; `section(name)` reads any section."""

    server: ServerConfig
    sampler: SamplerConfig
    log: LogConfig
    paths: PathsConfig
    probes: ProbesConfig
    carbon: CarbonConfig
    otlp: OtlpConfig
    pushgateway: PushgatewayConfig
    emissions_log: EmissionsLogConfig
    embodied: EmbodiedConfig
    attribution: AttributionConfig
    state: StateConfig
    probe_sections: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"  # where it came from, for messages
    # "section.key" -> where a value that did not come from `source` was set
    given: dict[str, str] = field(default_factory=dict, compare=False)

    def section(self, name: str) -> Any:
        if name in self.probe_sections:
            return self.probe_sections[name]
        if name in CORE:
            return getattr(self, name)
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """Every section by name, in `sections()` order, as plain data."""
        return {name: _plain(self.section(name)) for name in sections()}

    def where(self, key: str) -> str:
        """Where the value of `key` ("section.key") was set, to begin an error message."""
        return self.given.get(key, self.source)

    def error(self, e: ConfigError) -> ConfigError:
        """A ConfigError raised about this configuration's values elsewhere (resolving the
        region, loading the web config), prefixed with where its key was set. Such
        messages begin with the key path."""
        key = str(e).split(":", 1)[0]
        return ConfigError(f"{self.where(key if key.count('.') == 1 else '')}: {e}")


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


# The sections this module defines, by name, from Config's own fields.
CORE = tuple(f.name for f in dataclasses.fields(Config)
             if f.name not in ("probe_sections", "source", "given"))


@functools.cache
def sections() -> dict[str, Any]:
    """Section name -> its dataclass (or list[...] for a list section such as `declared`):
    the core sections, with the probes' after `probes`, in discovery order."""
    hints = typing.get_type_hints(Config)
    core = {name: hints[name] for name in CORE}
    owned = {s.section: s.settings for s in probes.registry() if s.section}
    clash = set(core) & set(owned)
    if clash:  # a programming error, caught by the tests
        raise RuntimeError(f"probe sections named like core sections: {sorted(clash)}")
    order = list(core)
    at = order.index("probes") + 1
    order[at:at] = list(owned)
    merged = {**core, **owned}
    return {name: merged[name] for name in order}


def is_list(hint: Any) -> bool:
    """A list section (`declared:`), replaced whole by a file, not merged key by key."""
    return typing.get_origin(hint) is list
