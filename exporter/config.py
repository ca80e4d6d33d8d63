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
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

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
PROBE_NAMES = ("rapl", "nvml", "cpu_model", "ram_model")


class ConfigError(Exception):
    """A configuration that cannot run. str() is the whole message for the user."""


def _limits(**kw: Any) -> dict[str, Any]:
    return {"metadata": kw}


@dataclass(frozen=True)
class Server:
    listen: str = field(**_limits(check="listen"))
    web_config_file: str | None


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
    gpu: Gpu
    cpu: Cpu
    ram: Ram
    carbon: Carbon
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
    return resources.files("exporter.bundled").joinpath("default.yaml").read_text("utf-8")


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
            if rest.startswith(name + "_"):
                key = rest[len(name) + 1:]
                if key in {f.name for f in dataclasses.fields(cls)}:
                    try:
                        data[name][key] = parse_yaml(raw, var) if raw != "" else None
                    except ConfigError:
                        data[name][key] = raw  # not YAML: the plain string
                    given[f"{name}.{key}"] = f"environment variable {var}"
                    break
        else:
            known = [f"{ENV_PREFIX}{n.upper()}_{f.name.upper()}"
                     for n, c in sections.items() for f in dataclasses.fields(c)]
            raise _unknown("environment", var, known)


def _build(data: dict[str, Any], origin: str, given: dict[str, str]) -> Config:
    built = {}
    for name, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            source = given.get(f"{name}.{f.name}", origin)
            values[f.name] = _check(f"{source}: {name}.{f.name}", data[name][f.name],
                                    hints[f.name], f.metadata)
        built[name] = cls(**values)
    cfg = Config(**built, source=origin, given=given)
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
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be a list, got {_show(value)}")
        for v in value:
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise ConfigError(f"{where}: items must be names or numbers, got {_show(v)}")
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
        if meta.get("check") == "listen":
            parse_listen(value, where)
        return value
    raise TypeError(f"no check for {hint!r}")  # a programming error, caught by the tests


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


def parse_listen(value: str, where: str = "listen") -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: '{value}' must be HOST:PORT with a port from 0 to 65535 "
                          "(for example 0.0.0.0:29100 or [::1]:29100)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def dump(cfg: Config) -> str:
    """The effective configuration as YAML, as `config check` prints it."""
    return yaml.safe_dump(cfg.as_dict(), sort_keys=False)
