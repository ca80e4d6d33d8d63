"""Configuration: one YAML file over built-in defaults, then environment overrides.

The defaults live in the bundled `default.yaml` (shipped in the wheel), the types and
limits in the dataclasses below; `load()` checks a file against both and fails before
anything starts, naming the file, the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from carbonmeter.probes.base import KINDS
from carbonmeter.units import UNITS

ENV_PREFIX = "CARBONMETER_"
MAX_FILE_BYTES = 1 << 20  # a configuration is a page of YAML, not a megabyte
# Hostile YAML: a configuration needs a few levels of nesting and hardly any aliases.
# Limits on the composed document stop alias ("billion laughs") bombs and nesting deep
# enough to exhaust the parser's recursion before anything is built from them.
MAX_DEPTH = 32
MAX_ALIASES = 100
MAX_NODES = 10_000  # values in the document with every alias expanded
MIX_SOURCES = (
    "coal", "oil", "natural_gas", "nuclear", "hydro", "wind", "solar", "biomass",
    "geothermal", "other",
)  # fmt: skip
# In the order discovery tries them (exporter/discovery.py).
PROBE_NAMES = ("rapl", "amd_energy", "hwmon", "nvml", "powermetrics", "powergadget", "redfish",
               "ipmi", "declared", "cpu_model", "ram_model")
HWMON_KINDS = (*KINDS, "host")  # "host": a meter of the whole host
DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
TEMPORALITIES = ("cumulative", "delta")
SECRET = "<hidden>"  # what `config check` prints for passwords and header values
CLOUD_PROVIDERS = ("aws", "azure", "gcp")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # datetime.weekday() order
PROVIDER_TYPES = ("electricitymaps", "watttime", "carbonintensity_uk", "http", "file")
MAX_G_PER_KWH = 5000  # well above any grid; a larger number is a unit mistake
ATTRIBUTION_LEVELS = ("none", "pod", "container", "process")


class ConfigError(Exception):
    """A configuration that cannot run. str() is the whole message for the user."""


def _limits(**kw: Any) -> dict[str, Any]:
    return {"metadata": kw}


@dataclass(frozen=True)
class Server:
    listen: str = field(**_limits(check="listen"))
    web_config_file: str | None
    healthz_auth: bool


@dataclass(frozen=True)
class Sampler:
    interval_seconds: float = field(**_limits(min=0.1, max=3600))
    probe_timeout_seconds: float = field(**_limits(min=0.01, max=600))


@dataclass(frozen=True)
class State:
    path: str | None
    checkpoint_seconds: float = field(**_limits(min=0.1, max=86_400))


@dataclass(frozen=True)
class Log:
    level: str = field(**_limits(choices=("debug", "info", "warning", "error")))


@dataclass(frozen=True)
class Paths:
    sysfs: str
    procfs: str


@dataclass(frozen=True)
class Probes:
    disabled: list[str] = field(**_limits(choices=PROBE_NAMES))


@dataclass(frozen=True)
class Rapl:
    psys: bool


@dataclass(frozen=True)
class Gpu:
    devices: list[str]


@dataclass(frozen=True)
class Hwmon:
    include: list[str]
    exclude: list[str]
    kinds: dict[str, str] = field(**_limits(values=HWMON_KINDS))


@dataclass(frozen=True)
class Powermetrics:
    command: str
    interval_ms: float | None = field(**_limits(min=100, max=3_600_000))


@dataclass(frozen=True)
class Powergadget:
    command: str | None
    log: str | None
    resolution_ms: float = field(**_limits(min=50, max=60_000))


@dataclass(frozen=True)
class Ipmi:
    command: str
    args: list[str]
    timeout_seconds: float = field(**_limits(min=0.5, max=120))


@dataclass(frozen=True)
class Redfish:
    url: str | None = field(**_limits(check="base_url"))
    username: str | None
    password_env: str
    password_file: str | None
    auth: str = field(**_limits(choices=("basic", "session")))
    verify_tls: bool
    ca_file: str | None
    timeout_seconds: float = field(**_limits(min=0.5, max=120))
    chassis: list[str]


@dataclass(frozen=True)
class DeclaredDevice:
    """One constant-power device in the top-level `declared:` list."""

    id: str = field(**_limits(check="device_id"))
    kind: str = field(**_limits(choices=KINDS))
    watts: float = field(**_limits(min=0, max=1_000_000))
    name: str | None = None


@dataclass(frozen=True)
class Cpu:
    tdp_watts: float | None = field(**_limits(min=1, max=100_000))


@dataclass(frozen=True)
class Ram:
    watts_per_gb: float = field(**_limits(min=0, max=100))


@dataclass(frozen=True)
class Cloud:
    """A cloud provider's region, priced at its bundled figure."""

    provider: str = field(**_limits(choices=CLOUD_PROVIDERS))
    region: str = field(**_limits())


@dataclass(frozen=True)
class Schedule:
    """An hour-of-day profile in a named time zone (operators publish these per site)."""

    timezone: str = field(**_limits(check="timezone"))
    hours: list[float] = field(**_limits(length=24, min=0, max=MAX_G_PER_KWH))
    days: dict[str, list[float]] | None = field(
        default=None, **_limits(keys=WEEKDAYS, length=24, min=0, max=MAX_G_PER_KWH))


@dataclass(frozen=True)
class Provider:
    """One live intensity source. Which keys a type needs is checked in _check_provider."""

    type: str = field(**_limits(choices=PROVIDER_TYPES))
    name: str | None = None  # the `provider` label; default: the type
    zone: str | None = None
    url: str | None = None
    json_path: str | None = None
    unit: str | None = field(default=None, **_limits(choices=UNITS))
    path: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    username: str | None = None
    secret_env: str | None = None
    secret_file: str | None = None
    refresh_seconds: float | None = field(default=None, **_limits(min=0.05, max=86_400))
    timeout_seconds: float = field(default=10.0, **_limits(min=0.05, max=300))
    staleness_seconds: float = field(default=3600.0, **_limits(min=0.1, max=30 * 86_400))


@dataclass(frozen=True)
class Carbon:
    region: str | None
    cloud: Cloud | None
    intensity_g_per_kwh: float | None = field(**_limits(min=0, max=MAX_G_PER_KWH))
    schedule: Schedule | None
    mix: dict[str, float] | None = field(**_limits(keys=MIX_SOURCES, min=0))
    source_intensities: dict[str, float] = field(
        **_limits(keys=MIX_SOURCES, min=0, max=MAX_G_PER_KWH))
    providers: list[Provider]
    pue: float = field(**_limits(min=1.0, max=10.0))


@dataclass(frozen=True)
class Otlp:
    """Resolved by `carbonmeter.config.otel`: every None left in the file is filled from the
    standard OTEL_* variables or a default, so the sink gets concrete settings."""

    enabled: bool
    endpoint: str = field(**_limits(check="url"))
    protocol: str = field(**_limits(choices=OTLP_PROTOCOLS))
    headers: dict[str, str] = field(**_limits(secret=True))
    insecure: bool
    certificate: str | None = field(**_limits(check="file"))
    client_certificate: str | None = field(**_limits(check="file"))
    client_key: str | None = field(**_limits(check="file"))
    interval_seconds: float = field(**_limits(min=0.1, max=3600))
    temporality: str = field(**_limits(choices=TEMPORALITIES))
    timeout_seconds: float = field(**_limits(min=0.1, max=600))


@dataclass(frozen=True)
class Pushgateway:
    url: str | None = field(**_limits(check="url"))
    job: str
    instance: str | None
    grouping: dict[str, str] = field(**_limits(check="label_name"))
    interval_seconds: float | None = field(**_limits(min=0.1, max=3600))
    username: str | None
    password: str | None = field(**_limits(secret=True))
    certificate: str | None = field(**_limits(check="file"))
    client_certificate: str | None = field(**_limits(check="file"))
    client_key: str | None = field(**_limits(check="file"))
    timeout_seconds: float = field(**_limits(min=0.1, max=600))
    delete_on_exit: bool


@dataclass(frozen=True)
class EmissionsLog:
    path: str | None
    format: str = field(**_limits(choices=("csv", "jsonl")))
    project_name: str


@dataclass(frozen=True)
class Hardware:
    """What making one piece of hardware emitted, spread over the years it serves."""

    kg_co2eq: float = field(**_limits(min=0, max=1_000_000))
    lifetime_years: float = field(**_limits(min=0.01, max=100))


@dataclass(frozen=True)
class Embodied:
    devices: dict[str, Hardware]


@dataclass(frozen=True)
class Attribution:
    level: str = field(**_limits(choices=ATTRIBUTION_LEVELS))
    scope: str = field(**_limits(choices=("node", "self")))
    idle_policy: str = field(**_limits(choices=("requests", "equal", "unattributed")))
    idle_watts: dict[str, float] = field(**_limits(keys=("cpu", "gpu", "platform"), min=0,
                                                   max=100_000))
    top_n: int = field(**_limits(min=1, max=100_000))
    min_energy_joules: float = field(**_limits(min=0, max=1e12))
    cgroupfs: str | None
    kubelet_url: str | None
    kubelet_token_file: str
    kubelet_ca_file: str | None
    kubelet_insecure_tls: bool
    downward_api_dir: str | None


@dataclass(frozen=True)
class Config:
    server: Server
    sampler: Sampler
    log: Log
    paths: Paths
    probes: Probes
    rapl: Rapl
    hwmon: Hwmon
    gpu: Gpu
    powermetrics: Powermetrics
    powergadget: Powergadget
    ipmi: Ipmi
    redfish: Redfish
    cpu: Cpu
    ram: Ram
    carbon: Carbon
    otlp: Otlp
    pushgateway: Pushgateway
    emissions_log: EmissionsLog
    embodied: Embodied
    declared: list[DeclaredDevice]
    attribution: Attribution
    state: State
    source: str = "built-in defaults"  # where it came from, for messages
    # "section.key" -> where a value that did not come from `source` was set
    given: dict[str, str] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        d.pop("given")
        return d

    def where(self, key: str) -> str:
        """Where the value of `key` ("section.key") was set, to begin an error message."""
        return self.given.get(key, self.source)

    def error(self, e: ConfigError) -> ConfigError:
        """A ConfigError raised about this configuration's values elsewhere (resolving the
        region, loading the web config), prefixed with where its key was set. Such
        messages begin with the key path."""
        key = str(e).split(":", 1)[0]
        return ConfigError(f"{self.where(key if key.count('.') == 1 else '')}: {e}")


def default_text() -> str:
    """The bundled default configuration, commented: also the reference example."""
    return resources.files("carbonmeter.bundled").joinpath("default.yaml").read_text("utf-8")


@functools.cache
def _defaults() -> dict[str, Any]:
    return parse_yaml(default_text(), "built-in defaults")


def load(path: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the file, then CARBONMETER_* variables, then command-line
    `overrides` ({"section.key": value}); validated as a whole."""
    data = copy.deepcopy(_defaults())
    origin = "built-in defaults"
    if path is not None:
        origin = str(path)
        _merge(data, _read_file(Path(path)), origin)
    env = os.environ if env is None else env
    given: dict[str, str] = {}  # "section.key" -> where a value not from the file came from
    _apply_env(data, env, given)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        data[section][key] = value
        given[dotted] = "command line"
    from carbonmeter.config import otel as otel_env

    otel_env.resolve(data, env, origin)
    return _build(data, origin, given)


def read_yaml(path: Path) -> Any:
    """A YAML file's content: at most 1 MiB of UTF-8, parsed with parse_yaml's limits."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a configuration may be at most 1 MiB")
        text = path.read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    return parse_yaml(text, str(path))


def _read_file(path: Path) -> dict[str, Any]:
    loaded = read_yaml(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a "
                          f"{type(loaded).__name__}")
    return loaded


class _Refused(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting and many aliases while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _Refused(f"more than {MAX_ALIASES} aliases (*name); a configuration "
                               "needs hardly any", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels; a configuration "
                               "needs 3", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _count_nodes(node: Any) -> None:
    """Refuse a document whose values, aliases expanded, exceed MAX_NODES (an alias bomb,
    or an alias to its own ancestor, which never ends)."""
    stack, n = [node], 0
    while stack:
        item = stack.pop()
        n += 1
        if n > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES} values once aliases are expanded (an alias "
                           "bomb, or an alias inside its own anchor)")
        if isinstance(item, yaml.SequenceNode):
            stack.extend(item.value)
        elif isinstance(item, yaml.MappingNode):
            stack.extend(v for pair in item.value for v in pair)


def parse_yaml(text: str, origin: str) -> Any:
    """YAML text to Python data, with the limits above; ConfigError for anything wrong."""
    loader = None
    try:
        loader = _LimitedLoader(text)  # the reader refuses unprintable characters here
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or e
        if isinstance(e, yaml.reader.ReaderError):
            problem = (f"character #x{e.character:04x} is not allowed (position "
                       f"{e.position})" if isinstance(e.character, int) else e.reason)
        problem = " ".join(str(problem).split())  # one line, whatever PyYAML wrote
        raise ConfigError(f"{origin}: invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError) as e:
        # PyYAML's constructors raise these for values like 2020-13-45 or !!int abc
        raise ConfigError(f"{origin}: invalid YAML value: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()


@functools.cache
def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)
            if f.name not in ("source", "given")}


def _unknown(origin: str, key: str, known: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{origin}: unknown key '{key}'{hint} (allowed: {', '.join(known)})")


def _merge(base: dict[str, Any], overlay: dict[str, Any], origin: str) -> None:
    sections = _sections()
    for name, values in overlay.items():
        if name not in sections:
            raise _unknown(origin, str(name), sections)
        if _is_list(sections[name]):  # a list section (declared:) is replaced whole
            base[name] = values
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: '{name}' must be a mapping of keys, "
                              f"not {type(values).__name__}")
        keys = [f.name for f in dataclasses.fields(sections[name])]
        for key, value in values.items():
            if key not in keys:
                raise _unknown(origin, f"{name}.{key}", [f"{name}.{k}" for k in keys])
            base[name][key] = value


def _apply_env(data: dict[str, Any], env: typing.Mapping[str, str],
               given: dict[str, str]) -> None:
    sections = _sections()
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for name, cls in sections.items():
            if rest == name and _is_list(cls):
                data[name] = _env_value(raw, var)
                given[name] = f"environment variable {var}"
                break
            if rest.startswith(name + "_") and not _is_list(cls):
                key = rest[len(name) + 1:]
                if key in {f.name for f in dataclasses.fields(cls)}:
                    data[name][key] = _env_value(raw, var)
                    given[f"{name}.{key}"] = f"environment variable {var}"
                    break
        else:
            known = [f"{ENV_PREFIX}{n.upper()}" if _is_list(c) else
                     f"{ENV_PREFIX}{n.upper()}_{f.name.upper()}"
                     for n, c in sections.items()
                     for f in ([None] if _is_list(c) else dataclasses.fields(c))]
            raise _unknown("environment", var, known)


def _env_value(raw: str, var: str) -> Any:
    try:
        return parse_yaml(raw, var) if raw != "" else None
    except ConfigError:
        return raw  # not YAML: the plain string


def _is_list(hint: Any) -> bool:
    return typing.get_origin(hint) is list


def _build(data: dict[str, Any], origin: str, given: dict[str, str]) -> Config:
    built: dict[str, Any] = {}
    for name, cls in _sections().items():
        if _is_list(cls):
            built[name] = _check(f"{origin}: {name}", data[name], cls, {})
            continue
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            source = given.get(f"{name}.{f.name}", origin)
            values[f.name] = _check(f"{source}: {name}.{f.name}", data[name][f.name],
                                    hints[f.name], f.metadata)
        built[name] = cls(**values)
    ids = [d.id for d in built["declared"]]
    for i, device_id in enumerate(ids):
        if device_id in ids[:i]:
            raise ConfigError(f"{origin}: declared[{i}].id: '{device_id}' is declared twice; "
                              "each device needs its own id")
    cfg = Config(**built, source=origin, given=given)
    c = cfg.carbon
    if c.mix is not None and sum(c.mix.values()) <= 0:
        raise ConfigError(f"{origin}: carbon.mix: shares must add up to more than 0")
    for name in ("otlp", "pushgateway"):
        section = getattr(cfg, name)
        if (section.client_certificate is None) != (section.client_key is None):
            raise ConfigError(f"{origin}: {name}.client_certificate and {name}.client_key "
                              "go together: set both for client TLS, or neither")
    p = cfg.pushgateway
    if (p.username is None) != (p.password is None):
        raise ConfigError(f"{origin}: pushgateway.username and pushgateway.password go "
                          "together: set both for basic auth, or neither")
    if "job" in p.grouping:
        raise ConfigError(f"{origin}: pushgateway.grouping: 'job' is set by pushgateway.job")
    if c.region is not None and c.cloud is not None:
        raise ConfigError(f"{origin}: carbon.region and carbon.cloud are both set; keep one "
                          "(carbon.cloud for a cloud region, carbon.region for a grid)")
    names: set[str] = set()
    for i, p in enumerate(c.providers):
        where = f"{origin}: carbon.providers[{i}]"
        _check_provider(where, p)
        name = p.name or p.type
        if name in names:
            raise ConfigError(f"{where}.name: '{name}' is used twice; give each provider its "
                              "own name")
        names.add(name)
    if cfg.otlp.enabled and cfg.otlp.protocol == "grpc" and not _grpc_installed():
        raise ConfigError(f"{cfg.where('otlp.protocol')}: otlp.protocol: grpc needs the gRPC "
                          "exporter, which is not installed: pip install 'carbonmeter[grpc]', "
                          "or use http/protobuf")
    if cfg.attribution.idle_policy == "requests" and cfg.attribution.level == "process":
        raise ConfigError(f"{origin}: attribution.idle_policy: 'requests' needs "
                          "attribution.level pod or container (processes request no CPUs); "
                          "use equal or unattributed")
    return cfg


def _grpc_installed() -> bool:
    """Whether the `grpc` extra is installed, without importing it (grpc loads 20 MB)."""
    import importlib.util

    try:
        return importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


# Keys each provider type needs; the rest of Provider's keys are optional for every type.
PROVIDER_NEEDS = {
    "electricitymaps": ("zone", "secret"),
    "watttime": ("zone", "username", "secret"),
    "carbonintensity_uk": (),
    "http": ("url", "json_path", "unit"),
    "file": ("path", "unit"),
}


def _check_provider(where: str, p: Provider) -> None:
    if p.secret_env is not None and p.secret_file is not None:
        raise ConfigError(f"{where}: secret_env and secret_file are both set; keep one")
    for key in PROVIDER_NEEDS[p.type]:
        if key == "secret":
            if p.secret_env is None and p.secret_file is None:
                raise ConfigError(f"{where}: type {p.type} needs a secret: set secret_env (the "
                                  "name of an environment variable) or secret_file (a path)")
        elif getattr(p, key) is None:
            allowed = f" (one of {', '.join(UNITS)})" if key == "unit" else ""
            raise ConfigError(f"{where}.{key}: required for type {p.type}{allowed}")
    zone = p.zone or ""
    if p.type == "carbonintensity_uk" and p.zone is not None and not (
            1 <= int(zone) <= 17 if zone.isdigit() else zone.isalnum()):
        raise ConfigError(f"{where}.zone: '{p.zone}' must be a region id from 1 to 17 or the "
                          "outward part of a postcode (RG10); empty for Great Britain")


def _check(where: str, value: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Coerce and check one value against its annotation and limits."""
    args = typing.get_args(hint)
    optional = (typing.get_origin(hint) in (typing.Union, types.UnionType)
                and type(None) in args)
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint) or hint
    if dataclasses.is_dataclass(hint):
        return _check_mapping(where, value, hint)
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        if value is None:
            value = []
        if item is str and isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, list):
            what = "a list of mappings" if dataclasses.is_dataclass(item) else "a list"
            raise ConfigError(f"{where}: must be {what}, got {_show(value)}")
        if "length" in meta and len(value) != meta["length"]:
            raise ConfigError(f"{where}: must be a list of {meta['length']} values, "
                              f"got {len(value)}")
        if item is str:
            for v in value:
                if not isinstance(v, (str, int)) or isinstance(v, bool):
                    raise ConfigError(f"{where}: items must be names or numbers, got "
                                      f"{_show(v)}")
        return [_check(f"{where}[{i}]", v, item, meta) for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {_show(value)}")
        keys = meta.get("keys", ())
        item_type = typing.get_args(hint)[1]
        # values may be limited too (hwmon.kinds: kind names), the keys by `keys`/`check`
        item_meta = {**meta, "check": None, "choices": meta.get("values", ())}
        out = {}
        for k, v in value.items():
            if keys and k not in keys:
                raise _unknown(where, str(k), keys)
            if meta.get("check") == "label_name" and not LABEL_NAME.fullmatch(str(k)):
                raise ConfigError(f"{where}: '{k}' is not a Prometheus label name "
                                  "([a-zA-Z_][a-zA-Z0-9_]*)")
            out[str(k)] = _check(f"{where}.{k}", v, item_type, item_meta)
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: must be a whole number{_range(meta)}, got "
                              f"{_show(value)}")
        if ("min" in meta and value < meta["min"]) or ("max" in meta and value > meta["max"]):
            raise ConfigError(f"{where}: {value} is out of range{_range(meta)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number{_range(meta)}, got {_show(value)}")
        try:
            value = float(value)
        except OverflowError:  # an integer too large for a float
            value = math.inf
        if not math.isfinite(value) or ("min" in meta and value < meta["min"]) or (
                "max" in meta and value > meta["max"]):
            raise ConfigError(f"{where}: {value:g} is out of range{_range(meta, finite=True)}")
        return value
    if hint is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
            raise ConfigError(f"{where}: must be a non-empty string, got {_show(value)}")
        value = str(value)
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{where}: '{value}' is not one of {', '.join(meta['choices'])}")
        check = meta.get("check")
        if check == "listen":
            parse_listen(value, where)
        elif check == "url":
            check_url(value, where)
        elif check == "base_url" and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ConfigError(f"{where}: '{value}' must be the BMC's base URL, "
                              "https://HOST[:PORT] (http:// also works)")
        elif check == "file" and not os.path.isfile(value):  # False, not OSError, for a
            # name too long for the filesystem or one with a NUL byte
            raise ConfigError(f"{where}: '{value}' is not a readable file")
        elif check == "timezone":
            _check_timezone(value, where)
        elif check == "device_id" and not DEVICE_ID.fullmatch(value):
            raise ConfigError(f"{where}: '{value}' must be lower-case letters, digits, '.', "
                              "'_' or '-', starting with a letter or digit (e.g. switch-1)")
        return value
    raise TypeError(f"no check for {hint!r}")  # a programming error, caught by the tests


def _check_mapping(where: str, value: Any, cls: type) -> Any:
    """A nested mapping (carbon.cloud, each of carbon.providers) into its frozen dataclass."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping of keys, got {_show(value)}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in value:
        if key not in names:
            raise _unknown(where, str(key), names)
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields:
        if f.name in value:
            out[f.name] = _check(f"{where}.{f.name}", value[f.name], hints[f.name], f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required = [g.name for g in fields if g.default is dataclasses.MISSING
                        and g.default_factory is dataclasses.MISSING]
            raise ConfigError(f"{where}: missing key '{f.name}' (required: "
                              f"{', '.join(required)})")
    return cls(**out)


def _check_timezone(name: str, where: str) -> None:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: unknown time zone '{name}'; use an IANA tz database name "
                          "such as Europe/Paris or America/New_York") from None


def _range(meta: typing.Mapping[str, Any], *, finite: bool = False) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    if lo is not None:
        return f" of at least {lo:g}" + (" (finite)" if finite else "")
    return " (a finite number)" if finite else ""


def _show(value: Any) -> str:
    text = repr(value)
    return (text[:40] + "…" if len(text) > 40 else text) + f" ({type(value).__name__})"


LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def check_url(value: str, where: str) -> None:
    """An http:// or https:// URL with a host, as the OTLP and Pushgateway clients need."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        ok = (parts.scheme in ("http", "https") and bool(parts.hostname)
              and (parts.port or 0) >= 0)  # .port raises ValueError when not a number
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{where}: '{value}' must be a URL http://HOST:PORT or "
                          "https://HOST:PORT (optionally with a path)")


def parse_listen(value: str, where: str = "listen") -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: '{value}' must be HOST:PORT with a port from 0 to 65535 "
                          "(for example 0.0.0.0:29100 or [::1]:29100)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def dump(cfg: Config) -> str:
    """The effective configuration as YAML, as `config check` prints it; secrets (a
    password, header values that carry API keys) are replaced by a placeholder."""
    data = cfg.as_dict()
    for name, cls in _sections().items():
        if not dataclasses.is_dataclass(cls):
            continue  # a top-level list (declared) holds no secrets
        for f in dataclasses.fields(cls):
            value = data[name][f.name]
            if f.metadata.get("secret") and value:
                data[name][f.name] = ({k: SECRET for k in value} if isinstance(value, dict)
                                      else SECRET)
    return yaml.safe_dump(data, sort_keys=False)
