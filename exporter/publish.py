"""What a finished measurement sends out — `carbonmeter run` at exit, the API at stop/flush.

`finished()` is the one call site: the emissions log, then the push at exit. A failing
output is reported and the others still go.
"""

from __future__ import annotations

import logging
from typing import Any

from exporter.measure import Usage
from exporter.sinks.emissions_log import EmissionsLog, RowContext, rows_for

log = logging.getLogger(__name__)


def finished(usage: Usage, ctx: RowContext, *, emissions_log: EmissionsLog | None,
             cfg: Any, rows_of: Usage | None = None, final: bool = True) -> list[str]:
    """Send `usage` (the whole run) to every configured output; one line per failure.

    `rows_of`: the part not yet in the log, when an earlier flush wrote the rest. `final` is
    False for a flush: the log gets its rows, but the push at exit waits for the end.
    """
    problems = []
    if emissions_log is not None:
        try:
            emissions_log.append(rows_for(rows_of or usage, ctx))
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
    """Pushgateway: the push at exit of `carbonmeter run` and the API goes here (the
    Pushgateway sink is built separately). Returns "" or a line saying what failed."""
    return ""
