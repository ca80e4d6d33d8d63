"""The wheel ships every package of the source tree (pyproject lists them by hand)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_in_pyproject():
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for top in ("exporter", "probes") for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"not shipped in the wheel: {sorted(found - listed)}"
