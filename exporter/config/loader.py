"""Loading: the bundled defaults, then a file, then CARBONMETER_* variables, then the
command line, then the standard OTEL_* variables for what is still unset; checked as a whole.

The defaults live in the bundled `default.yaml` (shipped in the wheel); `load()` checks the
result against the schema and fails before anything starts, naming the file, the key and
what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import typing
from importlib import resources
from pathlib import Path
from typing import Any

from carbonmeter.config import otel
from carbonmeter.config.checks import check_value, check_whole, unknown_key
from carbonmeter.config.defaults import DEFAULTS
from carbonmeter.config.environ import apply_env
from carbonmeter.config.errors import ConfigError
from carbonmeter.config.schema import CORE, ENV_PREFIX, SECRET, Config, is_list, sections
from carbonmeter.config.yamlfile import read_mapping


def default_text() -> str:
    """The bundled default configuration, commented: also the reference example."""
    return resources.files("carbonmeter.bundled").joinpath("default.yaml").read_text("utf-8")


@functools.cache
def _defaults() -> dict[str, Any]:
    """default.yaml, and for a section it does not list (a probe added without one) the
    defaults its dataclass gives."""
    data = copy.deepcopy(DEFAULTS)
    for name, cls in sections().items():
        if name in data:
            continue
        if is_list(cls):
            data[name] = []
            continue
        data[name] = {}
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RuntimeError(f"section {name}: key {f.name} has no default in "
                                   "default.yaml or its dataclass")  # caught by the tests
            data[name][f.name] = (f.default if f.default is not dataclasses.MISSING
                                  else f.default_factory())
    return data


def load(path: str | os.PathLike[str] | None = None, env: typing.Mapping[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then the file, then CARBONMETER_* variables, then command-line
    `overrides` ({"section.key": value}); validated as a whole."""
    data = copy.deepcopy(_defaults())
    origin = "built-in defaults"
    if path is not None:
        origin = str(path)
        _merge(data, read_mapping(Path(path)), origin)
    env = os.environ if env is None else env
    given: dict[str, str] = {}  # "section.key" -> where a value not from the file came from
    apply_env(data, env, given)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".")
        data[section][key] = value
        given[dotted] = "command line"
    otel.resolve(data, env, origin)
    return _build(data, origin, given)


_loaded: dict[str, Config] = {}
_MAX_LOADED = 32


def cached(path: str | os.PathLike[str] | None = None,
           overrides: dict[str, Any] | None = None) -> Config:
    """load(path, overrides=...) once per process while the file and the variables it reads
    (CARBONMETER_*, OTEL_*) stay the same: a decorated function called in a loop checks its
    configuration once. A changed file (modification time, size, inode) is read again."""
    stat = None
    if path is not None:
        try:
            s = os.stat(path)
            stat = (s.st_mtime_ns, s.st_size, s.st_ino)
        except OSError:
            return load(path, overrides=overrides)  # load() says what is wrong with it
    env = sorted((k, v) for k, v in os.environ.items()
                 if k.startswith((ENV_PREFIX, "OTEL_")))
    key = repr((None if path is None else os.fspath(path), stat, env,
                sorted((overrides or {}).items())))
    cfg = _loaded.get(key)
    if cfg is None:
        cfg = load(path, overrides=overrides)
        if len(_loaded) >= _MAX_LOADED:
            _loaded.clear()
        _loaded[key] = cfg
    return cfg


def _merge(base: dict[str, Any], overlay: dict[str, Any], origin: str) -> None:
    known = sections()
    for name, values in overlay.items():
        if name not in known:
            raise unknown_key(origin, str(name), known)
        if is_list(known[name]):  # a list section (declared:) is replaced whole
            base[name] = values
            continue
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: '{name}' must be a mapping of keys, "
                              f"not {type(values).__name__}")
        keys = [f.name for f in dataclasses.fields(known[name])]
        for key, value in values.items():
            if key not in keys:
                raise unknown_key(origin, f"{name}.{key}", [f"{name}.{k}" for k in keys])
            base[name][key] = value


def _build(data: dict[str, Any], origin: str, given: dict[str, str]) -> Config:
    """Every section checked key by key into its dataclass, then the rules between keys."""
    built: dict[str, Any] = {}
    for name, cls in sections().items():
        if is_list(cls):
            built[name] = check_value(f"{given.get(name, origin)}: {name}", data[name], cls, {})
            continue
        hints = _hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            source = given.get(f"{name}.{f.name}", origin)
            values[f.name] = check_value(f"{source}: {name}.{f.name}", data[name][f.name],
                                         hints[f.name], f.metadata)
        built[name] = cls(**values)
    core = {name: built.pop(name) for name in CORE}
    cfg = Config(**core, probe_sections=built, source=origin, given=given)
    check_whole(cfg)
    return cfg


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A section's resolved annotations: evaluating them is most of the cost of a load."""
    return typing.get_type_hints(cls)


def dump(cfg: Config) -> str:
    """The effective configuration as YAML, as `config check` prints it; secrets (a
    password, header values that carry API keys) are replaced by a placeholder."""
    data = cfg.as_dict()
    for name, cls in sections().items():
        if not dataclasses.is_dataclass(cls):
            continue  # a top-level list (declared) holds no secrets
        for f in dataclasses.fields(cls):
            value = data[name][f.name]
            if f.metadata.get("secret") and value:
                data[name][f.name] = ({k: SECRET for k in value} if isinstance(value, dict)
                                      else SECRET)
    import yaml  # only `config check` writes YAML

    return yaml.safe_dump(data, sort_keys=False)
