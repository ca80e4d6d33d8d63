"""The `otlp` section completed from the standard OpenTelemetry variables.

The OpenTelemetry specification names the variables every SDK reads (OTLP exporter
configuration and SDK environment variables); a collector's usual settings, from the
OpenTelemetry Operator, a Helm chart or a shell, therefore work unchanged. As in the
SDKs, where an argument beats the environment, a key the configuration sets (file,
CARBONMETER_OTLP_*, command line) wins; OTEL_* fill the keys left null. Setting an
endpoint, in the file or as OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT, turns OTLP on.

Everything is resolved here, once, so `config check` prints what will really be used
and the sink receives concrete values.
"""

from __future__ import annotations

import typing
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from carbonmeter.config.checks import check_url, check_value
from carbonmeter.config.errors import ConfigError
from carbonmeter.config.schema import OTLP_PROTOCOLS

SIGNAL = "OTEL_EXPORTER_OTLP_METRICS_"  # metrics only; wins over the generic one
GENERIC = "OTEL_EXPORTER_OTLP_"
DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317",
                     "http/protobuf": "http://localhost:4318/v1/metrics"}
HTTP_PATH = "/v1/metrics"
DEFAULT_TIMEOUT_S = 10.0  # the specification's default export timeout
TEMPORALITY = {"cumulative": "cumulative", "delta": "delta",
               # the specification's LowMemory: delta for synchronous counters only;
               # every carbonmeter counter is observable, so cumulative
               "lowmemory": "cumulative"}


def _env(env: typing.Mapping[str, str], name: str,
         generic: bool = True) -> tuple[str, str] | None:
    """(variable, value) of the metrics-specific variable, else the generic one."""
    for var in (SIGNAL + name, GENERIC + name) if generic else (SIGNAL + name,):
        value = env.get(var, "").strip()
        if value:
            return var, value
    return None


def _ms(var: str, raw: str, lo_s: float, hi_s: float) -> float:
    """Milliseconds, as the specification defines these variables, to seconds."""
    try:
        ms = float(raw)
    except ValueError:
        ms = float("nan")
    if not lo_s * 1000 <= ms <= hi_s * 1000:  # also false for nan
        raise ConfigError(f"environment: {var}: '{raw}' must be a number of milliseconds "
                          f"from {lo_s * 1000:g} to {hi_s * 1000:g}")
    return ms / 1000


def _headers(var: str, raw: str) -> dict[str, str]:
    """`key=value,key2=value2`, values percent-encoded (the W3C Baggage format)."""
    out = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"environment: {var}: '{item.strip()}' is not key=value "
                              "(expected key1=value1,key2=value2)")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def _boolean(var: str, raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ConfigError(f"environment: {var}: '{raw}' must be true or false")
    return raw.lower() == "true"


def resolve(data: dict[str, Any], env: typing.Mapping[str, str], origin: str) -> None:
    """Fill the nulls of data["otlp"] in place; errors name the variable or the key."""
    o = data["otlp"]
    key = f"{origin}: otlp"

    if o["protocol"] is None:
        found = _env(env, "PROTOCOL")
        if found and found[1] not in OTLP_PROTOCOLS:
            hint = " (the OpenTelemetry Python SDK has no http/json exporter)" \
                if found[1] == "http/json" else ""
            raise ConfigError(f"environment: {found[0]}: '{found[1]}' is not one of "
                              f"{', '.join(OTLP_PROTOCOLS)}{hint}")
        # http/protobuf: the specification's default transport
        o["protocol"] = found[1] if found else "http/protobuf"
    protocol = check_value(f"{key}.protocol", o["protocol"], str, {"choices": OTLP_PROTOCOLS})

    endpoint, where, base = o["endpoint"], f"{key}.endpoint", False
    if endpoint is None:
        found = _env(env, "ENDPOINT")
        if found:
            where, endpoint = f"environment: {found[0]}", found[1]
            base = found[0] == GENERIC + "ENDPOINT"  # a base URL: the signal path is added

    if o["enabled"] is None:
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        o["enabled"] = endpoint is not None and not disabled

    if o["insecure"] is None:
        found = _env(env, "INSECURE")
        o["insecure"] = _boolean(*found) if found else False
    insecure = check_value(f"{key}.insecure", o["insecure"], bool, {})
    if endpoint is None:
        endpoint = DEFAULT_ENDPOINTS[protocol]
    else:
        endpoint = check_value(where if where.startswith("environment") else f"{key}.endpoint",
                          endpoint, str, {})
        if "://" not in endpoint and protocol == "grpc":
            # gRPC's host:port form; plaintext only when asked, as the specification says
            endpoint = ("http://" if insecure else "https://") + endpoint
        check_url(endpoint, where)
        if protocol == "http/protobuf":
            parts = urlsplit(endpoint)
            if base:
                endpoint = urlunsplit(parts._replace(path=parts.path.rstrip("/") + HTTP_PATH))
            elif parts.path in ("", "/") and not where.startswith("environment"):
                endpoint = urlunsplit(parts._replace(path=HTTP_PATH))
    o["endpoint"] = endpoint
    o["insecure"] = urlsplit(endpoint).scheme == "http"  # what the connection will be

    if o["headers"] is None:
        found = _env(env, "HEADERS")
        o["headers"] = _headers(*found) if found else {}
    for name in ("certificate", "client_certificate", "client_key"):
        if o[name] is None:
            found = _env(env, name.upper())
            if found:
                o[name] = check_value(f"environment: {found[0]}", found[1], str, {"check": "file"})

    if o["interval_seconds"] is None:
        raw = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
        o["interval_seconds"] = (_ms("OTEL_METRIC_EXPORT_INTERVAL", raw, 0.1, 3600) if raw
                                 else data["sampler"]["interval_seconds"])
    if o["timeout_seconds"] is None:
        found = _env(env, "TIMEOUT")
        o["timeout_seconds"] = _ms(*found, 0.1, 600) if found else DEFAULT_TIMEOUT_S
    if o["temporality"] is None:
        found = _env(env, "TEMPORALITY_PREFERENCE", generic=False)
        if found and found[1].lower() not in TEMPORALITY:
            raise ConfigError(f"environment: {found[0]}: '{found[1]}' is not one of "
                              f"{', '.join(TEMPORALITY)}")
        o["temporality"] = TEMPORALITY[found[1].lower()] if found else "cumulative"
