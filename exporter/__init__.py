"""carbonmeter: the exporter process, its sinks, and the API for measuring code.

`from carbonmeter import track, track_emissions, EmissionsTracker` loads the API on first use,
so `import carbonmeter` itself stays cheap (nothing is imported until a name is asked for).
"""

from __future__ import annotations

from typing import Any

_API = ("track", "track_emissions", "EmissionsTracker", "OfflineEmissionsTracker", "Tracker",
        "Usage", "EmissionsData", "LoggerOutput", "OutputMethod")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from carbonmeter.version import version

        value = version()
        globals()[name] = value
        return value
    if name in _API:
        from carbonmeter.measure import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'carbonmeter' has no attribute {name!r}")
