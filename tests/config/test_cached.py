"""A measurement in a loop checks its configuration once: `config.cached` gives the same
Config while the file and the CARBONMETER_*/OTEL_* variables stay as they were, and reads
again as soon as one of them changes."""

from __future__ import annotations

import os

from carbonmeter import config


def test_the_same_file_and_environment_give_the_same_config(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("carbon: {region: FR}\n")
    first = config.cached(path)
    assert config.cached(path) is first and first.carbon.region == "FR"
    assert config.cached(path, overrides={"carbon.region": "DE"}).carbon.region == "DE"
    assert config.cached(path) is first

    path.write_text("carbon: {region: SE}\n")  # same size: the modification time tells
    os.utime(path, ns=(1, 1))
    assert config.cached(path).carbon.region == "SE"

    monkeypatch.setenv("CARBONMETER_CARBON_REGION", "PL")
    assert config.cached(path).carbon.region == "PL"
    monkeypatch.delenv("CARBONMETER_CARBON_REGION")
    assert config.cached(path).carbon.region == "SE"
    assert config.cached(None) is config.cached(None)
