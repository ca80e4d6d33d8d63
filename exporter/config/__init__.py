"""Configuration (temporary facade while the package is split)."""

from carbonmeter.config import schema as _schema

globals().update({k: v for k, v in vars(_schema).items() if not k.startswith("__")})
