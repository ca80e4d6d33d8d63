"""Configuration: one YAML file over built-in defaults, with environment overrides.

`load()` gives a checked, frozen `Config`; `ConfigError` is the one error, a message for the
user. The modules, in the order a value goes through them: `schema` (sections and limits),
`yamlfile` (reading with limits), `environ` (CARBONMETER_* variables), `otel` (the standard
OTEL_* variables), `checks` (each value, then the rules between keys), `loader`.
"""

from carbonmeter.config.checks import check_url, parse_listen
from carbonmeter.config.errors import ConfigError
from carbonmeter.config.loader import cached, default_text, dump, load
from carbonmeter.config.schema import (
    ENV_PREFIX,
    MAX_G_PER_KWH,
    OTLP_PROTOCOLS,
    WEEKDAYS,
    AttributionConfig,
    CarbonConfig,
    CloudConfig,
    Config,
    EmbodiedConfig,
    EmissionsLogConfig,
    HardwareConfig,
    LogConfig,
    OtlpConfig,
    PathsConfig,
    ProbesConfig,
    ProviderConfig,
    PushgatewayConfig,
    SamplerConfig,
    ScheduleConfig,
    ServerConfig,
    StateConfig,
    sections,
)
from carbonmeter.config.yamlfile import parse_yaml, read_yaml

__all__ = [
    "ENV_PREFIX", "MAX_G_PER_KWH", "OTLP_PROTOCOLS", "WEEKDAYS", "AttributionConfig",
    "CarbonConfig", "CloudConfig", "Config", "ConfigError", "EmbodiedConfig",
    "EmissionsLogConfig", "HardwareConfig", "LogConfig", "OtlpConfig", "PathsConfig",
    "ProbesConfig", "ProviderConfig", "PushgatewayConfig", "SamplerConfig", "ScheduleConfig",
    "ServerConfig", "StateConfig", "cached", "check_url", "default_text", "dump", "load",
    "parse_listen", "parse_yaml", "read_yaml", "sections",
]
