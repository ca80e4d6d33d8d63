"""Checkpoints: the sampler's totals written to the state file on an interval, and at close.

Written on the sampler's thread right after a sample (carbonmeter.periodic: a thread of its
own would be a second wake-up); a checkpoint takes milliseconds, and one that is slow only
makes the next sample late, which loses no energy. The last checkpoint is written at close,
after the sampler's last sample, so a clean stop loses nothing (carbonmeter.state says how
each write is made durable).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from carbonmeter.periodic import Periodic
from carbonmeter.state import Store


class Checkpointer(Periodic):
    """Writes `export()` every `every` seconds, when a sample came since the last write."""

    cursor = None
    inline = True

    def __init__(self, store: Store, boot: str, export: Callable[[], dict[str, Any]],
                 every: float) -> None:
        super().__init__("checkpoint", every)
        self.store = store
        self.boot = boot
        self.export = export
        self._written: dict[str, Any] | None = None

    def tick(self) -> None:
        checkpoint = self.export()
        if checkpoint != self._written:  # no sample since the last one: nothing to write
            self.store.save(self.boot, checkpoint)
            self._written = checkpoint

    def final(self) -> None:
        self.store.save(self.boot, self.export())
        self.store.close()  # the last checkpoint is written: the file is free for the next

    def close(self, timeout: float = 30.0) -> None:
        super().close(timeout)
