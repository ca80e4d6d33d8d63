"""Power sources, one module each; `base` is the interface they share.

A module that ends with a `SPEC` (base.ProbeSpec) is a probe: `registry()` finds it by
looking at the package's modules, so no list of probe names is kept anywhere.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil

from carbonmeter.probes.base import ProbeSpec


@functools.cache
def registry() -> tuple[ProbeSpec, ...]:
    """Every probe's SPEC, in discovery order."""
    specs = []
    for info in pkgutil.iter_modules(__path__):
        spec = getattr(importlib.import_module(f"{__name__}.{info.name}"), "SPEC", None)
        if isinstance(spec, ProbeSpec):
            specs.append(spec)
    specs.sort(key=lambda s: s.order)
    for what in ("name", "order"):  # a programming error, caught by the tests
        values = [getattr(s, what) for s in specs]
        if len(set(values)) != len(values):
            raise RuntimeError(f"two probes share a {what}: {values}")
    return tuple(specs)


def names() -> tuple[str, ...]:
    return tuple(s.name for s in registry())
