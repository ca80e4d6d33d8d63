"""Pod and container names: the kubelet's pod list (a local server answering with a PodList
shaped as the kubelet's /pods), over HTTP and over HTTPS with a bearer token, and the
downward API."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from carbonmeter.attribution.kubernetes import Kubelet, own_pod, parse_pod_list
from tests.attribution.helpers import CPU, attributor, step
from tests.fixtures.node import standard_node
from tests.helpers import require, wait_for


@contextlib.contextmanager
def kubelet(body, *, status=200, tls=None, gate=None):
    """A stand-in kubelet: GET /pods answers `body()` (once `gate` is set, if given); yields
    (base URL, requests seen)."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if gate is not None:
                gate.wait(20)
            seen.append({"path": self.path, **dict(self.headers)})
            data = json.dumps(body()).encode() if status == 200 else b"Forbidden"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_parse_pod_list_of_every_container_kind(ram_path):
    sn = standard_node(ram_path, processes=30)
    doc = sn.node.pod_list()
    doc["items"][0]["status"]["initContainerStatuses"] = [
        {"name": "init", "containerID": "containerd://" + "ab" * 32}]
    pods = parse_pod_list(json.dumps(doc))
    web = pods[sn.web.uid]
    assert (web.namespace, web.name) == ("shop", "app-0")
    assert web.containers[sn.web.containers["carbonmeter"]] == "carbonmeter"
    assert web.containers["ab" * 32] == "init"
    with pytest.raises(ValueError, match="not a PodList"):
        parse_pod_list('{"kind": "Status"}')


def test_downward_api_variables_then_files(ram_path):
    (ram_path / "uid").write_text("u-1\n")
    (ram_path / "name").write_text("from-file\n")
    assert own_pod({}, str(ram_path)).name == "from-file"
    pod = own_pod({"POD_NAME": "from-env", "POD_NAMESPACE": "ns"}, str(ram_path))
    assert (pod.uid, pod.name, pod.namespace) == ("u-1", "from-env", "ns")
    assert own_pod({}, str(ram_path / "absent")) is None


def test_containers_named_by_the_kubelet_and_the_sandbox_is_the_pods(ram_path):
    sn = standard_node(ram_path, processes=200)
    node = sn.node
    answer = threading.Event()
    with kubelet(node.pod_list, gate=answer) as (url, seen):
        a = attributor(node, "container", kubelet_url=url, idle_watts={"cpu": 0},
                       min_energy_joules=0)
        a.source.names.kubelet.min_interval = 0.05  # tests need not wait 5 s between asks
        side = next(p.pid for p in node.procs.values() if p.cgroup == sn.sidecar)
        pause = next(p.pid for p in node.procs.values() if p.cgroup == sn.web.sandbox)

        def one():
            node.run(side, 0.3)
            node.run(pause, 0.1)
            view = step(a, node, energy={CPU: 40.0})
            return {(r.workload, *r.labels): r.power_w for r in view.rows if r.kind == "cpu"}

        got = one()  # names unknown yet: everything in other until the kubelet answers
        assert got[("other", "", "", "")] == pytest.approx(40.0)
        answer.set()
        wait_for(lambda: a.source.names.kubelet.generation >= 1, what="a pod list")
        got = one()
        assert got[("container", "shop", "app-0", "carbonmeter")] == pytest.approx(30.0)
        # the pause container's ID is no container of the pod: once two more pod lists lack
        # it, its time is the pod's own row (container="")
        for _ in range(100):
            got = one()
            if (got.get(("pod", "shop", "app-0", "")) or 0) > 1:
                break
            time.sleep(0.06)
        assert got[("pod", "shop", "app-0", "")] == pytest.approx(10.0)
        assert got[("container", "shop", "app-0", "carbonmeter")] == pytest.approx(30.0)
        assert seen[0]["path"] == "/pods" and "Authorization" not in seen[0]
        a.close()


def test_https_kubelet_with_token_and_ca(ram_path):
    openssl = require("openssl")
    key, cert = ram_path / "key.pem", ram_path / "cert.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=node-1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    token = ram_path / "token"
    token.write_text("s3cr3t\n")
    doc = {"kind": "PodList", "items": [{"metadata": {"uid": "u1", "name": "p", "namespace":
                                                      "n"}}]}
    with kubelet(lambda: doc, tls=(str(cert), str(key))) as (url, seen):
        k = Kubelet(url, token_file=str(token), ca_file=str(cert))
        k.fetch()
        assert k.generation == 1 and k.pods["u1"].name == "p"
        assert seen[-1]["Authorization"] == "Bearer s3cr3t"
        untrusted = Kubelet(url, token_file=str(token))  # the system CAs do not know it
        untrusted.fetch()
        assert untrusted.generation == 0 and "CERTIFICATE_VERIFY_FAILED" in untrusted.error
        insecure = Kubelet(url, token_file=str(token), insecure=True)
        insecure.fetch()
        assert insecure.generation == 1


def test_kubelet_refusing_says_what_to_grant(caplog):
    with kubelet(dict, status=403) as (url, _):
        k = Kubelet(url + "/pods", token_file=None)
        k.fetch()
        k.fetch()
    assert k.generation == 0 and "HTTP 403" in k.error and "nodes/proxy" in k.error
    assert len([r for r in caplog.records if "HTTP 403" in r.message]) == 1  # once, not twice


def test_background_fetch_is_rate_limited():
    calls = []
    with kubelet(lambda: calls.append(1) or {"items": []}) as (url, _):
        k = Kubelet(url, token_file=None, min_interval=0.3)
        start = time.monotonic()
        k.want()
        wait_for(lambda: k.generation == 1, what="first fetch")
        k.want()
        wait_for(lambda: k.generation == 2, what="second fetch")
        assert time.monotonic() - start >= 0.3
        k.close()
    assert len(calls) == 2
