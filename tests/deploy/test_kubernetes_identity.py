"""deploy/kubernetes: the pods know which node and pod they are, reach their kubelet, and run
where and how a node agent must.

The manifests are rendered by `kubectl kustomize` and validated against the schemas in
test_kubernetes.py. Here the rendered pod specs are read the way the kubelet reads them: each
`fieldRef` is replaced by the pod's field (downward API) and `$(VAR)` in a value by a variable
defined before it, as Kubernetes documents for container environment variables. The
resulting environment then goes to a real `carbonmeter serve`, whose OTLP export a receiver
decodes with the official protos, and to the configuration loader with the ConfigMap.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from carbonmeter import config
from tests.deploy.shipped import venv_tool
from tests.deploy.test_kubernetes import KUSTOMIZE, carbonmeter_container, pod_specs
from tests.helpers import wait_for
from tests.otlp_receiver import Receiver
from tests.test_end_to_end import start_serve, stop

DAEMONSETS = ["base", "overlays/prometheus-operator", "overlays/gpu"]
POD = {"spec.nodeName": "node-a.example", "metadata.name": "carbonmeter-7xk2p",
       "metadata.namespace": "carbonmeter", "metadata.uid": "0f9c2a4e-1111-4c2b-9d3e-5a6b7c8d9e0f",
       "status.hostIP": "10.0.0.7"}
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in [*DAEMONSETS, "overlays/sidecar"]:
        r = subprocess.run([venv_tool("kubectl"), "kustomize", str(KUSTOMIZE / name)],
                           capture_output=True, text=True, check=True)
        out[name] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


def container_env(container: dict[str, Any], pod: dict[str, str] = POD) -> dict[str, str]:
    """The variables the kubelet gives the container: fieldRefs resolved, then $(VAR)
    expanded from the variables listed before it ($$ is a literal $; an unknown name is
    left as it is)."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "valueFrom" in e:
            env[e["name"]] = pod[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = _REFERENCE.sub(
                lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), e.get("value", ""))
    return env


def daemonset(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (ds,) = [o for o in objects if o["kind"] == "DaemonSet"]
    return ds


@pytest.mark.parametrize("target", DAEMONSETS)
def test_daemonset_takes_its_identity_from_the_downward_api(rendered, target):
    pod = daemonset(rendered[target])["spec"]["template"]["spec"]
    c = carbonmeter_container(pod)
    refs = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
            for e in c["env"] if "valueFrom" in e}
    assert refs == {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name",
                    "POD_NAMESPACE": "metadata.namespace", "HOST_IP": "status.hostIP"}
    env = container_env(c)
    assert not any("$(" in v for v in env.values()), env  # every reference was defined first
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "host.name=node-a.example"
    assert env["CARBONMETER_ATTRIBUTION_KUBELET_URL"] == "https://10.0.0.7:10250"


@pytest.mark.parametrize("target", DAEMONSETS)
def test_daemonset_runs_on_linux_at_node_critical_priority(rendered, target):
    ds = daemonset(rendered[target])
    pod = ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert pod["priorityClassName"] == "system-node-critical"
    # where critical priority is admitted only under a quota that names it (GKE)
    (quota,) = [o for o in rendered[target] if o["kind"] == "ResourceQuota"]
    assert quota["metadata"]["namespace"] == ds["metadata"]["namespace"]
    (match,) = quota["spec"]["scopeSelector"]["matchExpressions"]
    assert (match["scopeName"], match["operator"]) == ("PriorityClass", "In")
    assert pod["priorityClassName"] in match["values"]
    assert int(quota["spec"]["hard"]["pods"]) >= 5000  # Kubernetes' largest supported cluster


def test_sidecar_knows_its_pod_and_node(rendered):
    (_, pod), = pod_specs(rendered["overlays/sidecar"])
    env = container_env(carbonmeter_container(pod))
    assert {k: env[k] for k in ("POD_NAME", "POD_NAMESPACE", "POD_UID", "NODE_NAME")} == {
        "POD_NAME": POD["metadata.name"], "POD_NAMESPACE": POD["metadata.namespace"],
        "POD_UID": POD["metadata.uid"], "NODE_NAME": POD["spec.nodeName"]}
    assert env["OTEL_RESOURCE_ATTRIBUTES"] == "host.name=node-a.example"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def _allows(rule: dict[str, Any], group: str, resource: str, verb: str) -> bool:
    return (group in rule.get("apiGroups", []) and resource in rule.get("resources", [])
            and (verb in rule.get("verbs", []) or "*" in rule.get("verbs", [])))


@pytest.mark.parametrize("target", DAEMONSETS)
def test_the_daemonsets_account_may_read_its_kubelets_pod_list(rendered, target):
    """The kubelet authorises GET /pods as get on nodes/proxy: a binding of exactly that,
    to the account the DaemonSet runs as, and nothing wider."""
    objects = rendered[target]
    ds = daemonset(objects)
    account = (ds["metadata"]["namespace"], ds["spec"]["template"]["spec"]["serviceAccountName"])
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"}
    granted = []
    for b in (o for o in objects if o["kind"] == "ClusterRoleBinding"):
        if any((s["kind"], s.get("namespace"), s["name"]) == ("ServiceAccount", *account)
               for s in b["subjects"]):
            assert b["roleRef"]["kind"] == "ClusterRole"
            granted += roles[b["roleRef"]["name"]]["rules"]
    assert any(_allows(r, "", "nodes/proxy", "get") for r in granted)
    assert granted == [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}]


def test_configmap_names_pods_through_the_kubelet_with_a_projected_token(rendered, tmp_path):
    objects = rendered["base"]
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    pod = daemonset(objects)["spec"]["template"]["spec"]
    c = carbonmeter_container(pod)
    f = tmp_path / "carbonmeter.yaml"
    f.write_text(cm["data"]["carbonmeter.yaml"])
    a = config.load(f, env=container_env(c)).attribution
    assert (a.level, a.scope, a.kubelet_url) == ("pod", "node", "https://10.0.0.7:10250")
    # the token file is the one the kubelet projects into this container
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {}
    for m in c["volumeMounts"]:
        for source in volumes[m["name"]].get("projected", {}).get("sources", []):
            if "serviceAccountToken" in source:
                mounted[str(Path(m["mountPath"]) / source["serviceAccountToken"]["path"])] = \
                    source["serviceAccountToken"]
    assert a.kubelet_token_file in mounted
    assert mounted[a.kubelet_token_file].get("expirationSeconds", 3600) <= 3600
    assert pod["automountServiceAccountToken"] is False  # no API server token besides


def test_otlp_resource_names_the_node_as_the_pod_spec_sets_it(rendered, tmp_path):
    env = container_env(carbonmeter_container(daemonset(rendered["base"])["spec"]["template"]
                                              ["spec"]))
    with Receiver("http/protobuf") as receiver:
        proc, _ = start_serve(tmp_path, f"""
probes: {{disabled: [rapl, nvml, ipmi]}}
state: {{path: {tmp_path / 'state.json'}}}
otlp:
  endpoint: {receiver.endpoint}
  protocol: http/protobuf
  interval_seconds: 0.2
""", env=env)
        try:
            wait_for(lambda: receiver.last("hw.host.energy"), what="a first OTLP export")
        finally:
            assert stop(proc) == 0, (tmp_path / "serve.log").read_text()
    resource = receiver.last("hw.host.energy").resource
    assert resource["k8s.node.name"] == "node-a.example"
    assert resource["host.name"] == "node-a.example"
    assert resource["k8s.pod.name"] == "carbonmeter-7xk2p"
    assert resource["k8s.namespace.name"] == "carbonmeter"
