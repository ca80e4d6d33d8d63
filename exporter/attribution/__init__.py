"""Energy shared among the workloads that spent it: pods, containers, processes, or the
process tree of one command.

The sampler hands each interval's per-device energy to an `Attributor`, which reads what every
workload used over the same interval (cgroups, /proc, NVML), shares each device's energy by
the model in `model.py`, and keeps cumulative rows published with each snapshot
(`Snapshot.attribution`). Nothing here runs when `attribution.level` is `none`.

For `carbonmeter run`: `process_tree(root_pid, cfg, probes)` makes an attributor for the
command's process tree, and `process_tree_share(snapshot)` reads the tree's part back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from carbonmeter.attribution.attributor import Attributor
from carbonmeter.attribution.ledger import Ledger
from carbonmeter.attribution.model import IdlePower
from carbonmeter.attribution.view import AttributionView, TreeShare, tree_share

if TYPE_CHECKING:
    from carbonmeter.config import Config
    from carbonmeter.probes.base import Probe
    from carbonmeter.snapshot import Snapshot

__all__ = ["AttributionView", "Attributor", "TreeShare", "Unavailable", "build",
           "process_tree", "process_tree_share"]

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """Attribution cannot run here; the message says why in one line."""


def _idle(cfg: Config, probes: Sequence[Probe]) -> IdlePower:
    """Idle power per device where a model knows it (the CPU estimate at zero load)."""
    known = {}
    for p in probes:
        known.update(p.idle_watts())
    return IdlePower(cfg.attribution.idle_watts, known)


def build(cfg: Config, probes: Sequence[Probe], *, env: Mapping[str, str] | None = None,
          nvml: Any = None) -> Attributor | None:
    """The attributor `attribution.*` asks for; None when the level is none.

    Raises Unavailable when it cannot run here (no cgroups, no pod UID for scope self).
    """
    a = cfg.attribution
    if a.level == "none":
        return None
    from carbonmeter.attribution import cgroups
    from carbonmeter.attribution.procfs import fd_budget

    env = os.environ if env is None else env
    procfs = cfg.paths.procfs
    cgroupfs = a.cgroupfs or os.path.join(cfg.paths.sysfs, "fs", "cgroup")
    own_uid = None
    own = None
    layout = None
    if a.level != "process" or a.scope == "self":
        try:
            layout = cgroups.detect(cgroupfs)
        except cgroups.CgroupsUnavailable as e:
            raise Unavailable(str(e)) from None
    if a.scope == "self":
        from carbonmeter.attribution.kubernetes import own_pod

        own = own_pod(env, a.downward_api_dir)
        own_uid = own.uid if own else _uid_from_cgroup(procfs, layout)
        if not own_uid:
            raise Unavailable(
                "attribution.scope self: cannot tell which pod this is: set POD_UID from the "
                "downward API (env: valueFrom: fieldRef: fieldPath: metadata.uid)")
    budget = fd_budget()
    if a.level == "process":
        from carbonmeter.attribution.sources import ProcessSource

        source: Any = ProcessSource(procfs, budget, only_pod=own_uid,
                                    cgroup_version=layout.version if layout else 2)
        mine = None if own_uid is None else (lambda key: key[0] == "process")
    else:
        from carbonmeter.attribution.kubernetes import Kubelet, Names
        from carbonmeter.attribution.sources import CgroupSource

        assert layout is not None
        kubelet = None
        if a.kubelet_url:
            kubelet = Kubelet(a.kubelet_url, token_file=a.kubelet_token_file,
                              ca_file=a.kubelet_ca_file, insecure=a.kubelet_insecure_tls)
        source = CgroupSource(a.level, layout, procfs, Names(kubelet, own), budget)
        mine = None if own_uid is None else (
            lambda key: key[0] in ("pod", "container") and key[1] == own_uid)
    ledger = Ledger(top_n=a.top_n, min_energy_j=a.min_energy_joules, host_row=mine is None)
    return Attributor(source, scope=a.scope, policy=a.idle_policy, idle=_idle(cfg, probes),
                      ledger=ledger, own=mine, nvml=nvml)


def _uid_from_cgroup(procfs: str, layout: Any) -> str | None:
    """This process's pod UID from its own cgroup path (no cgroup namespace, or cgroup v1)."""
    from carbonmeter.attribution import cgroups

    try:
        with open(os.path.join(procfs, "self", "cgroup"), "rb") as f:
            path = cgroups.cgroup_path(f.read(), layout.version)
    except OSError:
        return None
    return cgroups.classify_path(path).pod_uid or None if path else None


def process_tree(root_pid: int, cfg: Config, probes: Sequence[Probe], *,
                 reaper_pid: int | None = None, nvml: Any = None) -> Attributor:
    """An attributor for the process tree of `root_pid` (`carbonmeter run`).

    Pass `reaper_pid=os.getpid()` when this process started the root: what it reaps of the
    root then counts too, so the root's last interval is not lost. Attach it to the sampler
    (`sampler.attributor = ...`) and call `start()` right after starting the root; sample once
    more after the root has been waited for. Idle power follows `attribution.idle_policy`
    (`requests` is read as `unattributed`: a process requests no CPUs).
    """
    from carbonmeter.attribution.procfs import fd_budget
    from carbonmeter.attribution.sources import TREE, TreeSource

    a = cfg.attribution
    source = TreeSource(root_pid, cfg.paths.procfs, fd_budget(), reaper_pid=reaper_pid)
    policy = a.idle_policy if a.idle_policy != "requests" else "unattributed"
    return Attributor(source, scope="tree", policy=policy, idle=_idle(cfg, probes),
                      ledger=Ledger(top_n=1, min_energy_j=0.0, host_row=False),
                      own=lambda key: key == TREE, nvml=nvml)


def process_tree_share(snapshot: Snapshot) -> TreeShare | None:
    """The process tree's energy and CO2eq in a snapshot of a `process_tree` sampler; None
    when the snapshot has no attribution."""
    return tree_share(snapshot.attribution)
