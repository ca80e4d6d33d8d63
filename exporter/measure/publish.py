"""What a finished measurement sends out — `carbonmeter run` at exit, the API at stop/flush.

`finished()` is the one call site: the emissions log, then the push at exit. A failing
output is reported and the others still go.
"""

from __future__ import annotations

import logging
from typing import Any

from carbonmeter.sinks.emissions_log import EmissionsLog, Load, RowContext, rows_for
from carbonmeter.snapshot import DeviceTotal, Snapshot
from carbonmeter.usage import Usage

log = logging.getLogger(__name__)


def finished(usage: Usage, ctx: RowContext, *, emissions_log: EmissionsLog | None,
             cfg: Any, rows_of: Usage | None = None, final: bool = True,
             load: tuple[Load | None, Load | None] | None = None) -> list[str]:
    """Send `usage` (the whole run) to every configured output; one line per failure.

    `rows_of`: the part not yet in the log, when an earlier flush wrote the rest. `final` is
    False for a flush: the log gets its rows, but the push at exit waits for the end.
    `load`: the machine's CPU times and memory at the start and end of the rows' span.
    """
    problems = []
    if emissions_log is not None:
        try:
            emissions_log.append(rows_for(rows_of or usage, ctx, load))
        except OSError as e:
            problems.append(f"emissions log {emissions_log.path}: cannot write: "
                            f"{e.strerror or e}")
    if final:
        problem = push_at_exit(usage, ctx, cfg)
        if problem:
            problems.append(problem)
    for p in problems:
        log.error("%s", p)
    return problems


def push_at_exit(usage: Usage, ctx: RowContext, cfg: Any) -> str:
    """Push the run's totals once, as counters that start at zero with the run: a batch job
    that ends between two scrapes still leaves its energy in the Pushgateway. Returns "" or
    a line saying what failed."""
    gateway = getattr(cfg, "pushgateway", None)
    if gateway is None or gateway.url is None:
        return ""
    from carbonmeter.sinks.pushgateway import PushError, push_snapshot

    try:
        push_snapshot(gateway, usage_snapshot(usage))
    except PushError as e:
        return f"pushgateway: {e}"
    return ""


def usage_snapshot(usage: Usage) -> Snapshot:
    """A span as a snapshot, so it is pushed with the same names and types as `serve`'s."""
    devices = tuple(
        DeviceTotal(d.device, d.energy_j, d.emissions_g,
                    d.energy_j / usage.duration_s if usage.duration_s else None)
        for d in usage.devices)
    return Snapshot(seq=0, taken_unix=usage.started_unix + usage.duration_s, devices=devices,
                    host_energy_j=usage.energy_j,
                    host_power_w=usage.energy_j / usage.duration_s if usage.duration_s else None,
                    host_emissions_g=usage.emissions_g, intensity=usage.intensity,
                    pue=usage.pue, probes=(), metered=usage.metered)
