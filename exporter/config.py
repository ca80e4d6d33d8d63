"""Configuration: one YAML file over built-in defaults, then environment overrides.

The defaults live in the bundled `default.yaml` (shipped in the wheel), the types and
limits in the dataclasses below; `load()` checks a file against both and fails before
anything starts, naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

ENV_PREFIX = "CARBONMETER_"
MAX_FILE_BYTES = 1 << 20  # a configuration is a page of YAML, not a megabyte
MIX_SOURCES = (
    "coal", "oil", "natural_gas", "nuclear", "hydro", "wind", "solar", "biomass",
    "geothermal", "other",
)  # fmt: skip
PROBE_NAMES = ("rapl", "nvml", "cpu_model", "ram_model")
ATTRIBUTION_LEVELS = ("none", "pod", "container", "process")


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
    gpu: Gpu
    cpu: Cpu
    ram: Ram
    carbon: Carbon
    attribution: Attribution
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
            if rest.startswith(name + "_"):
                key = rest[len(name) + 1:]
                if key in {f.name for f in dataclasses.fields(cls)}:
                    try:
                        data[name][key] = yaml.safe_load(raw) if raw != "" else None
                    except yaml.YAMLError:
                        data[name][key] = raw
                    break
        else:
            known = [f"{ENV_PREFIX}{n.upper()}_{f.name.upper()}"
                     for n, c in sections.items() for f in dataclasses.fields(c)]
            raise _unknown("environment", var, known)


def _build(data: dict[str, Any], origin: str) -> Config:
    built = {}
    for name, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            values[f.name] = _check(f"{origin}: {name}.{f.name}", data[name][f.name],
                                    hints[f.name], f.metadata)
        built[name] = cls(**values)
    cfg = Config(**built, source=origin)
    if cfg.carbon.mix is not None and sum(cfg.carbon.mix.values()) <= 0:
        raise ConfigError(f"{origin}: carbon.mix: shares must add up to more than 0")
    if cfg.attribution.idle_policy == "requests" and cfg.attribution.level == "process":
        raise ConfigError(f"{origin}: attribution.idle_policy: 'requests' needs "
                          "attribution.level pod or container (processes request no CPUs); "
                          "use equal or unattributed")
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
        out = {}
        for k, v in value.items():
            if keys and k not in keys:
                raise _unknown(where, str(k), keys)
            out[str(k)] = _check(f"{where}.{k}", v, float, meta)
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
        return value
    raise TypeError(f"no check for {hint!r}")  # a programming error, caught by the tests


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
