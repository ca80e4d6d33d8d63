"""The `otlp` and `pushgateway` sections: the standard OTEL_* variables, what wins over
what, and errors that name the variable or key to fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from carbonmeter import config
from carbonmeter.config import ConfigError


def otlp(text: str = "", tmp_path=None, **env: str) -> config.OtlpConfig:
    path = None
    if text:
        path = tmp_path / "c.yaml"
        path.write_text(text)
    return config.load(path, env=env).otlp


def test_off_by_default_and_on_with_an_endpoint_variable_alone():
    assert otlp().enabled is False
    on = otlp(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")
    assert on.enabled and on.protocol == "http/protobuf"
    assert on.endpoint == "http://collector:4318/v1/metrics"  # base URL + the signal path
    assert on.temporality == "cumulative" and on.timeout_seconds == 10
    assert on.interval_seconds == 15  # the sampling interval
    assert otlp(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://c:4318/custom").endpoint == \
        "http://c:4318/custom"  # the signal variable is used as is
    assert otlp(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318/otlp/").endpoint == \
        "http://c:4318/otlp/v1/metrics"


def test_every_standard_variable():
    o = otlp(OTEL_EXPORTER_OTLP_ENDPOINT="http://ignored:1",
             OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="collector:4317",
             OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
             OTEL_EXPORTER_OTLP_INSECURE="true",
             OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20abc,x-scope-orgid=tenant1",
             OTEL_METRIC_EXPORT_INTERVAL="5000",
             OTEL_EXPORTER_OTLP_METRICS_TIMEOUT="2500",
             OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="Delta")
    assert o.enabled and o.protocol == "grpc"
    assert o.endpoint == "http://collector:4317" and o.insecure  # plaintext, as asked
    assert o.headers == {"authorization": "Bearer abc", "x-scope-orgid": "tenant1"}
    assert (o.interval_seconds, o.timeout_seconds, o.temporality) == (5.0, 2.5, "delta")
    tls = otlp(OTEL_EXPORTER_OTLP_ENDPOINT="collector:4317", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    assert tls.endpoint == "https://collector:4317" and not tls.insecure


def test_the_file_wins_over_otel_variables_and_carbonmeter_variables_over_the_file(tmp_path):
    text = ("otlp:\n  endpoint: http://from-file:4318\n  protocol: http/protobuf\n"
            "  interval_seconds: 30\n  headers: {team: file}\n")
    o = otlp(text, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://from-env:4317",
             OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_METRIC_EXPORT_INTERVAL="1000",
             OTEL_EXPORTER_OTLP_HEADERS="team=env")
    assert o.endpoint == "http://from-file:4318/v1/metrics" and o.protocol == "http/protobuf"
    assert o.interval_seconds == 30 and o.headers == {"team": "file"}
    o = otlp(text, tmp_path, CARBONMETER_OTLP_INTERVAL_SECONDS="2")
    assert o.interval_seconds == 2


def test_explicitly_disabled_stays_off(tmp_path):
    assert not otlp("otlp:\n  enabled: false\n", tmp_path,
                    OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318").enabled
    assert not otlp(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318", OTEL_SDK_DISABLED="true").enabled
    on = otlp("otlp:\n  enabled: true\n  protocol: grpc\n", tmp_path)
    assert on.enabled and on.endpoint == "http://localhost:4317"


@pytest.mark.parametrize(("env", "expected"), [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     r"environment: OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not one of grpc, "
     r"http/protobuf \(the OpenTelemetry Python SDK has no http/json exporter\)"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
     r"environment: OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' must be a URL"),
    ({"OTEL_METRIC_EXPORT_INTERVAL": "15s"},
     r"OTEL_METRIC_EXPORT_INTERVAL: '15s' must be a number of milliseconds from 100 to"),
    ({"OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, r"OTEL_EXPORTER_OTLP_TIMEOUT: '0' must be a number"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "api-key"},
     r"OTEL_EXPORTER_OTLP_HEADERS: 'api-key' is not key=value"),
    ({"OTEL_EXPORTER_OTLP_INSECURE": "yes"}, r"OTEL_EXPORTER_OTLP_INSECURE: 'yes' must be true"),
    ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
     r"OTEL_EXPORTER_OTLP_CERTIFICATE: '/nonexistent/ca.pem' is not a readable file"),
    ({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes"},
     r"'sometimes' is not one of cumulative, delta, lowmemory"),
])
def test_bad_variables_name_the_variable(env, expected):
    with pytest.raises(ConfigError, match=expected):
        config.load(env=env)


@pytest.mark.parametrize(("text", "expected"), [
    ("otlp:\n  protocol: http\n", r"otlp.protocol: 'http' is not one of grpc, http/protobuf"),
    ("otlp:\n  endpoint: ftp://x\n", r"otlp.endpoint: 'ftp://x' must be a URL"),
    ("otlp:\n  temporality: weekly\n", r"otlp.temporality: 'weekly' is not one of"),
    ("otlp:\n  client_certificate: /etc/hostname\n",
     r"otlp.client_certificate and otlp.client_key go together"),
    ("pushgateway:\n  url: pushgateway:9091\n", r"pushgateway.url: 'pushgateway:9091' must be"),
    ("pushgateway:\n  username: u\n", r"pushgateway.username and pushgateway.password go"),
    ("pushgateway:\n  grouping: {job: x}\n", r"pushgateway.grouping: 'job' is set by"),
    ("pushgateway:\n  grouping: {my-team: x}\n", r"'my-team' is not a Prometheus label name"),
    ("pushgateway:\n  grouping: {team: [a]}\n", r"pushgateway.grouping.team: must be a"),
])
def test_bad_keys_name_file_and_key(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as e:
        config.load(path, env={})
    assert str(path) in str(e.value)


def test_config_check_hides_secrets(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("otlp:\n  headers: {authorization: Bearer abc123}\n"
                    "pushgateway:\n  url: http://pg:9091\n  username: u\n  password: hunter2\n")
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "config", "check", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "abc123" not in out.stdout and "hunter2" not in out.stdout
    assert "authorization: <hidden>" in out.stdout and "password: <hidden>" in out.stdout
    assert "username: u" in out.stdout
