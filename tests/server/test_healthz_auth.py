"""/healthz with basic auth configured: it answers the shipped liveness and readiness probes,
which send no credentials, unless `server.healthz_auth` keeps it behind the auth.

`carbonmeter serve` runs as users run it, a subprocess with an exporter-toolkit web
configuration holding a bcrypt hash; the probe is the DaemonSet's own, read from the manifest.
"""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import yaml

from tests.helpers import http_get, wait_for
from tests.test_end_to_end import start_serve, stop

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {"Authorization": "Basic " + base64.b64encode(b"prometheus:scrape-me").decode()}


def shipped_probe_paths() -> set[str]:
    ds = yaml.safe_load((ROOT / "deploy/kubernetes/base/daemonset.yaml").read_text())
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    return {c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}


def test_healthz_answers_probes_without_credentials_unless_asked_to_keep_auth(tmp_path):
    hashed = bcrypt.hashpw(b"scrape-me", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    (tmp_path / "open").mkdir()
    (tmp_path / "closed").mkdir()
    base = f"probes: {{disabled: [rapl, nvml, ipmi]}}\nserver:\n  web_config_file: {web}\n"
    # two exporters at once: each its own state file (one file is one exporter's)
    servers = [start_serve(tmp_path / name, base + extra,
                           env={"CARBONMETER_STATE_PATH": str(tmp_path / name / "state.json")})
               for name, extra in (("open", ""), ("closed", "  healthz_auth: true\n"))]
    (probe,) = shipped_probe_paths()
    try:
        (_, open_), (_, closed) = servers
        for target in (open_, closed):
            wait_for(lambda t=target: http_get(f"http://{t}/healthz", CREDENTIALS)[0] == 200,
                     what="first sample")
        # default: the health check answers anyone, nothing else does
        status, _, body = http_get(f"http://{open_}{probe}")
        assert (status, body) == (200, b"ok\n")
        for path in ("/metrics", "/"):
            status, headers, body = http_get(f"http://{open_}{path}")
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
            assert b"carbonmeter_" not in body
        assert http_get(f"http://{open_}/metrics", CREDENTIALS)[0] == 200
        # healthz_auth: true keeps it behind the same auth
        assert http_get(f"http://{closed}{probe}")[0] == 401
        status, _, body = http_get(f"http://{closed}{probe}", CREDENTIALS)
        assert (status, body) == (200, b"ok\n")
    finally:
        codes = [stop(proc) for proc, _ in servers]
    assert codes == [0, 0]
    for name in ("open", "closed"):
        assert "Traceback" not in (tmp_path / name / "serve.log").read_text()
