"""The installed distribution's version: read from its metadata once, when first asked
(importlib.metadata costs about 30 ms, which `import carbonmeter` must not pay)."""

from __future__ import annotations

import functools


@functools.cache
def version() -> str:
    try:
        from importlib.metadata import version as installed

        return installed("carbonmeter")
    except Exception:  # running from a checkout that was never installed
        return "0.0.0+unknown"
