"""CARBONMETER_<SECTION>_<KEY> variables over the file: how a container or a unit file
changes one setting without a file of its own."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from carbonmeter.config.errors import ConfigError
from carbonmeter.config.schema import ENV_PREFIX, is_list, sections
from carbonmeter.config.yamlfile import parse_yaml


def apply_env(data: dict[str, Any], env: typing.Mapping[str, str],
               given: dict[str, str]) -> None:
    known = sections()
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX):].lower()
        for name, cls in known.items():
            if rest == name and is_list(cls):
                data[name] = _env_value(raw, var)
                given[name] = f"environment variable {var}"
                break
            if rest.startswith(name + "_") and not is_list(cls):
                key = rest[len(name) + 1:]
                if key in {f.name for f in dataclasses.fields(cls)}:
                    data[name][key] = _env_value(raw, var)
                    given[f"{name}.{key}"] = f"environment variable {var}"
                    break
        else:
            raise unknown_variable(var, known)


def _env_value(raw: str, var: str) -> Any:
    try:
        return parse_yaml(raw, var) if raw != "" else None
    except ConfigError:
        return raw  # not YAML: the plain string


def unknown_variable(var: str, known: dict[str, Any]) -> ConfigError:
    """One short line: the close matches, else the keys of the section it names, else the
    sections (every variable spelt out is 3 kB, too long to read in a pod's log)."""
    by_section = {n: [f"{ENV_PREFIX}{n.upper()}"] if is_list(c) else
                  [f"{ENV_PREFIX}{n.upper()}_{f.name.upper()}" for f in dataclasses.fields(c)]
                  for n, c in known.items()}
    # matched without the prefix, which every name shares and would make all look close
    variables = {v[len(ENV_PREFIX):]: v for names in by_section.values() for v in names}
    close = [variables[c] for c in difflib.get_close_matches(
        var[len(ENV_PREFIX):].upper(), list(variables), n=3, cutoff=0.8)]
    head = f"environment: unknown variable {var}"
    if close:
        return ConfigError(f"{head}; did you mean {' or '.join(repr(c) for c in close)}?")
    rest = var[len(ENV_PREFIX):].lower()
    section = max((n for n in known if rest.startswith(n + "_")), key=len, default=None)
    if section is not None and not is_list(known[section]):
        keys = ", ".join(f.name for f in dataclasses.fields(known[section]))
        return ConfigError(f"{head}: section {section} has the keys {keys} "
                           f"({ENV_PREFIX}{section.upper()}_<KEY>)")
    return ConfigError(f"{head}: variables are {ENV_PREFIX}<SECTION>_<KEY> for the keys of "
                       f"config/default.yaml; sections: {', '.join(known)}")
