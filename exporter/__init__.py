"""carbonmeter: the exporter process, its sinks, and the API for measuring code."""

try:
    from importlib.metadata import version as _version

    __version__ = _version("carbonmeter")
except Exception:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
