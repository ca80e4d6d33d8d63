"""Bundled data, installed as the package `exporter.bundled` (see pyproject.toml)."""
