"""CodeCarbon's own configuration, read the way CodeCarbon 3.3.2 reads it.

Three layers, the later winning: `~/.codecarbon.config`, then `./.codecarbon.config` (both
INI files with a `[codecarbon]` section), then the environment's `CODECARBON_<KEY>`
variables (any case). A keyword given to the tracker wins over all three. Every value read
here is a string; `parse` turns it into the keyword's type as CodeCarbon does (a boolean is
true when it reads "true" in any case; a number that does not parse is dropped with an error).
"""

from __future__ import annotations

import configparser
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from carbonmeter.config import ConfigError

log = logging.getLogger(__name__)

FILE_NAME = ".codecarbon.config"
SECTION = "codecarbon"
PREFIX = "codecarbon_"


def _read_file(path: Path) -> dict[str, str]:
    """The `[codecarbon]` section of one file; a file that is missing or unreadable is
    skipped, as configparser (and so CodeCarbon) skips it."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a CodeCarbon configuration (an INI file whose "
                          f"first line is [{SECTION}]): {first}") from None
    return dict(parser[SECTION]) if parser.has_section(SECTION) else {}


def read(env: Mapping[str, str] | None = None, home: Path | None = None,
         cwd: Path | None = None) -> dict[str, tuple[str, str]]:
    """Every key CodeCarbon's configuration sets: key -> (value, where it was set)."""
    env = os.environ if env is None else env
    out: dict[str, tuple[str, str]] = {}
    for folder in (home or Path.home(), cwd or Path.cwd()):
        path = (folder / FILE_NAME).expanduser()
        for key, value in _read_file(path).items():
            out[key] = (value, str(path))
    for name, value in env.items():
        if name.lower().startswith(PREFIX):
            out[name.lower()[len(PREFIX):]] = (value, name)
    return out


def parse(key: str, value: str, kind: Callable[[str], Any] | None, where: str) -> Any:
    """A configured string as the keyword's type; None (and an error logged) when it is not
    one, as CodeCarbon does."""
    if kind is None or kind is str:
        return value
    if kind is bool:
        return value.strip().lower() == "true"
    try:
        return kind(value)
    except (TypeError, ValueError):
        log.error("%s: %s=%r is not a%s %s; ignored", where, key, value,
                  "n" if kind.__name__[0] in "aeiou" else "", kind.__name__)
        return None
