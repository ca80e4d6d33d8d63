"""Checks: each value against its type and limits, then the rules between keys.

Every failure is one ConfigError that begins with where the value was set (a file, an
environment variable, the command line) and the key, and says what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import types
import typing
from typing import TYPE_CHECKING, Any

from carbonmeter.config.errors import ConfigError
from carbonmeter.units import UNITS

if TYPE_CHECKING:
    from carbonmeter.config.schema import Config, ProviderConfig

DEVICE_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
PATH_MAX = 4096  # Linux's, terminating NUL included
NAME_MAX = 255  # bytes in one path component
HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def check_value(where: str, value: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
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
        return check_mapping(where, value, hint)
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
        return [check_value(f"{where}[{i}]", v, item, meta) for i, v in enumerate(value)]
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
                raise unknown_key(where, str(k), keys)
            if meta.get("check") == "label_name" and not LABEL_NAME.fullmatch(str(k)):
                raise ConfigError(f"{where}: '{k}' is not a Prometheus label name "
                                  "([a-zA-Z_][a-zA-Z0-9_]*)")
            out[str(k)] = check_value(f"{where}.{k}", v, item_type, item_meta)
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
        if "\x00" in value:  # YAML's "\0" escape: no path, name or URL holds one
            raise ConfigError(f"{where}: {_show(value)} contains a NUL byte")
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
            # name too long for the filesystem; a device or FIFO is no file either
            raise ConfigError(f"{where}: {_show_path(value)} is not a readable file")
        elif check == "path":
            check_path(value, where)
        elif check == "timezone":
            check_timezone(value, where)
        elif check == "device_id" and not DEVICE_ID.fullmatch(value):
            raise ConfigError(f"{where}: '{value}' must be lower-case letters, digits, '.', "
                              "'_' or '-', starting with a letter or digit (e.g. switch-1)")
        return value
    raise TypeError(f"no check for {hint!r}")  # a programming error, caught by the tests


def check_mapping(where: str, value: Any, cls: type) -> Any:
    """A nested mapping (carbon.cloud, each of carbon.providers) into its frozen dataclass."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a mapping of keys, got {_show(value)}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for key in value:
        if key not in names:
            raise unknown_key(where, str(key), names)
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields:
        if f.name in value:
            out[f.name] = check_value(f"{where}.{f.name}", value[f.name], hints[f.name], f.metadata)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required = [g.name for g in fields if g.default is dataclasses.MISSING
                        and g.default_factory is dataclasses.MISSING]
            raise ConfigError(f"{where}: missing key '{f.name}' (required: "
                              f"{', '.join(required)})")
    return cls(**out)


def check_path(value: str, where: str) -> None:
    """A name the filesystem can take: at most PATH_MAX bytes, each component at most
    NAME_MAX (ENAMETOOLONG otherwise, in whatever opens it, long after start)."""
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:
        raise ConfigError(f"{where}: {_show_path(value)} cannot be encoded as a file "
                          "name") from None
    if len(raw) >= PATH_MAX:
        raise ConfigError(f"{where}: a path of {len(raw)} bytes; at most {PATH_MAX - 1} "
                          f"({_show_path(value)})")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise ConfigError(f"{where}: a name of {len(longest)} bytes in "
                          f"{_show_path(value)}; at most {NAME_MAX} in each part of a path")


def _show_path(value: str) -> str:
    return repr(value) if len(value) <= 80 else repr(value[:60]) + f"… ({len(value)} characters)"


def check_timezone(name: str, where: str) -> None:
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
    """'HOST:PORT', '[::1]:PORT' or ':PORT' -> (host, port). HOST is an IP address or an
    ASCII host name (the resolver takes nothing else: no NUL, no non-ASCII letters)."""
    host, sep, port = value.rpartition(":")
    usage = ("must be HOST:PORT with a port from 0 to 65535 (for example 0.0.0.0:29100 or "
             "[::1]:29100)")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {_show_path(value)} {usage}")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if not host:
        return "0.0.0.0", int(port)
    try:
        if bracketed or ":" in host:
            ipaddress.IPv6Address(host)
        elif not (len(host) <= 253 and host.isascii() and HOSTNAME.fullmatch(host)):
            raise ValueError(host)
    except ValueError:
        raise ConfigError(f"{where}: {_show_path(value)}: the host must be an IP address or "
                          f"an ASCII host name; {usage}") from None
    return host, int(port)


def unknown_key(origin: str, key: str, known: typing.Iterable[str]) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{origin}: unknown key '{key}'{hint} (allowed: {', '.join(known)})")


def grpc_installed() -> bool:
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


def check_provider(where: str, p: ProviderConfig) -> None:
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


def check_whole(cfg: Config) -> None:
    """The rules between keys, once every key is valid on its own."""
    origin = cfg.source
    declared = cfg.probe_sections.get("declared", [])
    ids = [d.id for d in declared]
    for i, device_id in enumerate(ids):
        if device_id in ids[:i]:
            raise ConfigError(f"{origin}: declared[{i}].id: '{device_id}' is declared twice; "
                              "each device needs its own id")
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
        check_provider(where, p)
        name = p.name or p.type
        if name in names:
            raise ConfigError(f"{where}.name: '{name}' is used twice; give each provider its "
                              "own name")
        names.add(name)
    if cfg.otlp.enabled and cfg.otlp.protocol == "grpc" and not grpc_installed():
        raise ConfigError(f"{cfg.where('otlp.protocol')}: otlp.protocol: grpc needs the gRPC "
                          "exporter, which is not installed: pip install 'carbonmeter[grpc]', "
                          "or use http/protobuf")
    if cfg.attribution.idle_policy == "requests" and cfg.attribution.level == "process":
        raise ConfigError(f"{origin}: attribution.idle_policy: 'requests' needs "
                          "attribution.level pod or container (processes request no CPUs); "
                          "use equal or unattributed")
