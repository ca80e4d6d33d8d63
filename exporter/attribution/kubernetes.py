"""Pod names, namespaces and container names for the UIDs and IDs found in cgroup paths.

Two sources, as deployed:

- a DaemonSet asks the kubelet of its node for its pod list (``GET /pods``, the same PodList
  the API server returns, with ``status.containerStatuses[].containerID`` =
  ``containerd://<id>``), on the authenticated port 10250 with the service account token, or
  on the read-only port 10255 where a cluster still opens it;
- a sidecar knows its own pod from the downward API: the variables POD_NAME, POD_NAMESPACE
  and POD_UID, or the files ``name``, ``namespace`` and ``uid`` of a downward-API volume.

The kubelet is asked from a thread of its own when an unknown UID or ID appears (at most every
`min_interval` seconds), so a slow kubelet never holds up a sample. Until names are known a
workload has no series of its own (its energy goes to `other`), so labels never change under a
series.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


@dataclass(frozen=True, slots=True)
class PodInfo:
    uid: str
    namespace: str
    name: str
    containers: Mapping[str, str] = field(default_factory=dict)  # container ID -> name


def parse_pod_list(data: bytes | str) -> dict[str, PodInfo]:
    """Pods by UID from a PodList (kubelet ``/pods`` or API server) JSON document."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise ValueError("not a PodList: no 'items' list")
    pods = {}
    for item in doc["items"]:
        meta = item.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            continue
        status = item.get("status") or {}
        containers = {}
        for group in ("initContainerStatuses", "containerStatuses",
                      "ephemeralContainerStatuses"):
            for c in status.get(group) or ():
                cid = c.get("containerID") or ""
                if "://" in cid and c.get("name"):
                    containers[cid.split("://", 1)[1]] = c["name"]
        pods[uid] = PodInfo(uid, meta.get("namespace", ""), meta.get("name", ""), containers)
    return pods


def own_pod(env: Mapping[str, str], directory: str | None) -> PodInfo | None:
    """This pod, from the downward API (variables first, then volume files); None if absent."""

    def get(var: str, name: str) -> str:
        value = env.get(var, "")
        if not value and directory:
            try:
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    value = f.read().strip()
            except OSError:
                value = ""
        return value

    uid = get("POD_UID", "uid")
    if not uid:
        return None
    return PodInfo(uid, get("POD_NAMESPACE", "namespace"), get("POD_NAME", "name"))


class Kubelet:
    """The node's pod list, fetched in the background on demand."""

    def __init__(self, url: str, *, token_file: str | None = TOKEN_FILE,
                 ca_file: str | None = None, insecure: bool = False, timeout: float = 5.0,
                 min_interval: float = 5.0) -> None:
        self.url = url.rstrip("/") if url.rstrip("/").endswith("/pods") else (
            url.rstrip("/") + "/pods")
        self.token_file = token_file
        self.timeout = timeout
        self.min_interval = min_interval
        self.pods: dict[str, PodInfo] = {}
        self.generation = 0  # successful fetches so far
        self.error = ""
        self._context: ssl.SSLContext | None = None
        if self.url.startswith("https:"):
            self._context = ssl.create_default_context(cafile=ca_file)
            if insecure:  # kubelet serving certificates are often self-signed
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = -1e9

    def want(self) -> None:
        """Ask for a fresh pod list soon (something unknown was seen)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="kubelet", daemon=True)
            self._thread.start()
        self._wanted.set()

    def fetch(self) -> None:
        """One request; on success replaces `pods` and bumps `generation`."""
        headers = {"Accept": "application/json"}
        if self._context is not None and self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as f:
                    headers["Authorization"] = "Bearer " + f.read().strip()
            except OSError as e:
                self._failed(f"cannot read the token {self.token_file}: {e.strerror}")
                return
        req = urllib.request.Request(self.url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout,
                                        context=self._context) as r:
                pods = parse_pod_list(r.read())
        except urllib.error.HTTPError as e:
            hint = (": give the service account get on nodes/proxy (RBAC)"
                    if e.code in (401, 403) else "")
            self._failed(f"HTTP {e.code} {e.reason}{hint}")
            return
        except (OSError, ValueError) as e:
            self._failed(str(getattr(e, "reason", None) or e))
            return
        self.pods = pods
        self.generation += 1
        if self.error:
            log.info("kubelet %s: answering again", self.url)
        self.error = ""

    def _failed(self, why: str) -> None:
        if why != self.error:
            log.warning("kubelet %s: %s; pods without names stay in workload=\"other\"",
                        self.url, why)
        self.error = why

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wanted.wait()
            if self._stop.is_set():
                return
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                return
            self._wanted.clear()
            self._last = time.monotonic()
            self.fetch()

    def close(self) -> None:
        self._stop.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)


class Names:
    """Labels for pods and containers: from the kubelet when configured, the downward API for
    this pod, else the UID and the short container ID (as `docker ps` shows it)."""

    def __init__(self, kubelet: Kubelet | None, own: PodInfo | None) -> None:
        self.kubelet = kubelet
        self.own = own
        self._first: dict[str, int] = {}  # uid or id -> kubelet generation when first seen
        self._asked: dict[str, int] = {}

    def pod(self, uid: str) -> tuple[str, str] | None:
        """(namespace, name); None while the kubelet has yet to say."""
        if self.own is not None and uid == self.own.uid:
            return self.own.namespace, self.own.name
        k = self.kubelet
        if k is None:
            return "", uid
        info = k.pods.get(uid)
        if info is not None:
            return info.namespace, info.name
        return ("", uid) if self._known_absent(uid) else None

    def container(self, uid: str, cid: str) -> str | None:
        """The container's name; "" for a cgroup that is no container of the pod (its
        sandbox); None while the kubelet has yet to say."""
        k = self.kubelet
        if k is None:
            return cid[:12]
        info = k.pods.get(uid)
        if info is not None and cid in info.containers:
            return info.containers[cid]
        return "" if self._known_absent(cid) else None

    def _known_absent(self, ident: str) -> bool:
        """True once two pod lists fetched after `ident` was first seen lack it: the kubelet
        reports a new container's ID a moment after its cgroup appears, so one is not enough."""
        k = self.kubelet
        assert k is not None
        first = self._first.get(ident)
        if first is None:
            first = self._first[ident] = k.generation
        self._asked[ident] = first
        if k.generation >= first + 2:
            return True
        k.want()
        return False

    def end_interval(self) -> None:
        """Forget what was not asked about this interval (pods and containers gone)."""
        self._first, self._asked = self._asked, {}

    def close(self) -> None:
        if self.kubelet is not None:
            self.kubelet.close()
