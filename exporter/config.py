"""Configuration: one YAML file over built-in defaults, then environment overrides.

The defaults live in the bundled `default.yaml` (shipped in the wheel), the types and
limits in the dataclasses below; `load()` checks a file against both and fails before
anything starts, naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from probes.base import KINDS

ENV_PREFIX = "CARBONMETER_"
MAX_FILE_BYTES = 1 << 20  # a configuration is a page of YAML, not a megabyte
MIX_SOURCES = (
    "coal", "oil", "natural_gas", "nuclear", "hydro", "wind", "solar", "biomass",
    "geothermal", "other",
)  # fmt: skip
# In the order discovery tries them (exporter/discovery.py).
PROBE_NAMES = ("rapl", "amd_energy", "hwmon", "nvml", "powermetrics", "powergadget", "redfish",
               "ipmi", "declared", "cpu_model", "ram_model")
HWMON_KINDS = (*KINDS, "host")  # "host": a meter of the whole host
DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


class ConfigError(Exception):
    """A configuration that cannot run. str() is the whole message for the user."""


def _limits(**kw: Any) -> dict[str, Any]:
    return {"metadata": kw}


@dataclass(frozen=True)
class Server:
    listen: str = field(**_limits(check="listen"))


@dataclass(frozen=True)
class Sampler:
    interval_seconds: float = field(**_limits(min=0.1, max=3600))


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
    url: str | None = field(**_limits(check="url"))
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
class Carbon:
    region: str | None
    intensity_g_per_kwh: float | None = field(**_limits(min=0, max=5000))
    mix: dict[str, float] | None = field(**_limits(keys=MIX_SOURCES, min=0))
    source_intensities: dict[str, float] = field(**_limits(keys=MIX_SOURCES, min=0, max=5000))
    pue: float = field(**_limits(min=1.0, max=10.0))


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
    declared: list[DeclaredDevice]
    source: str = "built-in defaults"  # where it came from, for messages

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


def default_text() -> str:
    """The bundled default configuration, commented: also the reference example."""
    return resources.files("exporter.bundled").joinpath("default.yaml").read_text("utf-8")


def load(path: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the file, then CARBONMETER_* variables, then command-line
    `overrides` ({"section.key": value}); validated as a whole."""
    data = yaml.safe_load(default_text())
    origin = "built-in defaults"
    if path is not None:
        origin = str(path)
        _merge(data, _read_file(Path(path)), origin)
    env = os.environ if env is None else env
    _apply_env(data, env)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        data[section][key] = value
    return _build(data, origin)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {size} bytes; a configuration may be at most 1 MiB")
        text = path.read_text("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', e)}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, not a "
                          f"{type(loaded).__name__}")
    return loaded


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config) if f.name != "source"}


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


def _apply_env(data: dict[str, Any], env: typing.Mapping[str, str]) -> None:
    sections = _sections()
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for name, cls in sections.items():
            if rest == name and _is_list(cls):
                data[name] = _env_value(raw)
                break
            if rest.startswith(name + "_") and not _is_list(cls):
                key = rest[len(name) + 1:]
                if key in {f.name for f in dataclasses.fields(cls)}:
                    data[name][key] = _env_value(raw)
                    break
        else:
            known = [f"{ENV_PREFIX}{n.upper()}" if _is_list(c) else
                     f"{ENV_PREFIX}{n.upper()}_{f.name.upper()}"
                     for n, c in sections.items()
                     for f in ([None] if _is_list(c) else dataclasses.fields(c))]
            raise _unknown("environment", var, known)


def _env_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        return raw


def _is_list(hint: Any) -> bool:
    return typing.get_origin(hint) is list


def _build(data: dict[str, Any], origin: str) -> Config:
    built: dict[str, Any] = {}
    for name, cls in _sections().items():
        if _is_list(cls):
            built[name] = _check(f"{origin}: {name}", data[name], cls, {})
            continue
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            values[f.name] = _check(f"{origin}: {name}.{f.name}", data[name][f.name],
                                    hints[f.name], f.metadata)
        built[name] = cls(**values)
    ids = [d.id for d in built["declared"]]
    for i, device_id in enumerate(ids):
        if device_id in ids[:i]:
            raise ConfigError(f"{origin}: declared[{i}].id: '{device_id}' is declared twice; "
                              "each device needs its own id")
    cfg = Config(**built, source=origin)
    if cfg.carbon.mix is not None and sum(cfg.carbon.mix.values()) <= 0:
        raise ConfigError(f"{origin}: carbon.mix: shares must add up to more than 0")
    return cfg


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
    if origin is list:
        if value is None:
            value = []
        item = typing.get_args(hint)[0]
        if dataclasses.is_dataclass(item):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: must be a list of mappings, got {_show(value)}")
            return [_record(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, got {_show(value)}")
        items = [str(v) for v in value]
        allowed = meta.get("choices")
        for v in items:
            if allowed and v not in allowed:
                raise ConfigError(f"{where}: '{v}' is not one of {', '.join(allowed)}")
        return items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: must be a mapping, got {_show(value)}")
        keys = meta.get("keys", ())
        values_hint = typing.get_args(hint)[1]
        value_meta = {**meta, "choices": meta.get("values", ())}
        out = {}
        for k, v in value.items():
            if keys and k not in keys:
                raise _unknown(where, str(k), keys)
            out[str(k)] = _check(f"{where}.{k}", v, values_hint, value_meta)
        return out
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {_show(value)}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number{_range(meta)}, got {_show(value)}")
        value = float(value)
        if value != value or ("min" in meta and value < meta["min"]) or (
                "max" in meta and value > meta["max"]):
            raise ConfigError(f"{where}: {value:g} is out of range{_range(meta)}")
        return value
    if hint is str:
        if not isinstance(value, (str, int)) or isinstance(value, bool) or value == "":
            raise ConfigError(f"{where}: must be a non-empty string, got {_show(value)}")
        value = str(value)
        if meta.get("choices") and value not in meta["choices"]:
            raise ConfigError(f"{where}: '{value}' is not one of {', '.join(meta['choices'])}")
        if meta.get("check") == "listen":
            parse_listen(value, where)
        if meta.get("check") == "url" and not re.fullmatch(r"https?://[^/\s]+/?", value):
            raise ConfigError(f"{where}: '{value}' must be the BMC's base URL, "
                              "https://HOST[:PORT] (http:// also works)")
        if meta.get("check") == "device_id" and not DEVICE_ID.fullmatch(value):
            raise ConfigError(f"{where}: '{value}' must be lower-case letters, digits, '.', "
                              "'_' or '-', starting with a letter or digit (e.g. switch-1)")
        return value
    raise TypeError(f"no check for {hint!r}")  # a programming error, caught by the tests


def _record(where: str, value: Any, cls: Any) -> Any:
    """One mapping of a list section (declared[2]) checked against its dataclass."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping of keys, got {_show(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    origin, _, path = where.rpartition(": ")
    for key in value:
        if key not in fields:
            raise _unknown(origin, f"{path}.{key}", [f"{path}.{k}" for k in fields])
    values = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING:
                raise ConfigError(f"{where}: '{name}' is missing (keys: {', '.join(fields)})")
            continue
        values[name] = _check(f"{where}.{name}", value[name], hints[name], f.metadata)
    return cls(**values)


def _range(meta: typing.Mapping[str, Any]) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and hi is not None:
        return f" from {lo:g} to {hi:g}"
    return f" of at least {lo:g}" if lo is not None else ""


def _show(value: Any) -> str:
    text = repr(value)
    return (text[:40] + "…" if len(text) > 40 else text) + f" ({type(value).__name__})"


def parse_listen(value: str, where: str = "listen") -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: '{value}' must be HOST:PORT with a port from 0 to 65535 "
                          "(for example 0.0.0.0:29100 or [::1]:29100)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def dump(cfg: Config) -> str:
    """The effective configuration as YAML, as `config check` prints it."""
    return yaml.safe_dump(cfg.as_dict(), sort_keys=False)
