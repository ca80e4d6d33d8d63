"""Bundled data, installed as the package `carbonmeter.bundled` (see pyproject.toml)."""
