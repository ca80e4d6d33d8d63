"""Where totals go. Every sink reads what the sampler published, never the hardware.

One contract for all of them (`Sink`): `start()` begins exporting; `close()` sends the final
values and releases what the sink holds. The app starts sinks after the sampler has its first
sample and closes them in reverse order after its last, so each sink's final export carries
the final totals. Sinks that run on an interval subclass `carbonmeter.periodic.Periodic` and
run on the sampler's clock.

Each sink that exports workload rows names its `cursor`: the attribution ledger keeps an
ended workload's series until every cursor has passed the interval it ended in, so a sink
that exports rarely still sees every final value.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    name: str
    cursor: str | None  # the name it acknowledges workload rows under; None: it exports none

    def start(self) -> None: ...

    def close(self) -> None: ...
