"""CARBONMETER_<SECTION>_<KEY> variables over the file: how a container or a unit file
changes one setting without a file of its own."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from carbonmeter.config.checks import unknown_key
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
            variables = [f"{ENV_PREFIX}{n.upper()}" if is_list(c) else
                         f"{ENV_PREFIX}{n.upper()}_{f.name.upper()}"
                         for n, c in known.items()
                         for f in ([None] if is_list(c) else dataclasses.fields(c))]
            raise unknown_key("environment", var, variables)


def _env_value(raw: str, var: str) -> Any:
    try:
        return parse_yaml(raw, var) if raw != "" else None
    except ConfigError:
        return raw  # not YAML: the plain string
