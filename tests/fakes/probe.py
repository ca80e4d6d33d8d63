"""One scripted probe for the tests of everything above the probes.

Real probes are tested on fixture trees (tests/probes); the sampler, the sinks and the
attribution need a source whose every read the test decides: a counter that counts, a
device that raises like a driver on a bad link, a read that hangs like an NVML call that
never returns, a meter that goes silent. Each read, in this order:

1. raises `fail` when it is set (an exception instance);
2. blocks while `hang` is set, until `release` is (a stuck driver call);
3. returns `script(n)` for the n-th read (n from 1), when a script is given — readings, or a
   whole ProbeRead; a script may raise too;
4. else returns `next`, readings a test sets before each step; None reads nothing and
   reports one error, as a meter that does not answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

from carbonmeter.probes.base import Device, Probe, ProbeRead, Reading

Script = Callable[[int], "Iterable[Reading] | ProbeRead"]


class ScriptedProbe(Probe):
    def __init__(self, devices: Sequence[Device], *, name: str = "scripted",
                 script: Script | None = None, covers: Iterable[str] | None = None,
                 may_block: bool = True) -> None:
        self.name = name
        self._devices = tuple(devices)
        self._covers = frozenset({d.kind for d in devices} if covers is None else covers)
        self.may_block = may_block
        self.script = script
        self.next: list[Reading] | None = None
        self.fail: BaseException | None = None
        self.hang = threading.Event()
        self.release = threading.Event()
        self.reads = 0  # reads started
        self.active = 0  # reads running now
        self.max_active = 0
        self.closed = False

    @classmethod
    def counting(cls, *devices: Device, joules: float = 1.0, **kw: object) -> ScriptedProbe:
        """Energy counters that each gain `joules` per read, wrapping as the device says."""
        step = round(joules * 1e6)

        def script(n: int) -> list[Reading]:
            return [Reading(d, counter_uj=(n * step) % int(d.wrap_uj) if d.wrap_uj
                            else n * step) for d in devices]

        return cls(devices, script=script, **kw)  # type: ignore[arg-type]

    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    @property
    def covers(self) -> frozenset[str]:
        return self._covers

    def read(self) -> ProbeRead:
        self.reads += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.fail is not None:
                raise self.fail
            if self.hang.is_set():
                self.release.wait()
            if self.script is not None:
                out = self.script(self.reads)
                return out if isinstance(out, ProbeRead) else ProbeRead(list(out), [])
            if self.next is None:
                return ProbeRead([], [f"{self.name}: no reading"])
            return ProbeRead(list(self.next), [])
        finally:
            self.active -= 1

    def close(self) -> None:
        self.closed = True
