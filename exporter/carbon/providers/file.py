"""A file another job rewrites: a number, or JSON with a path to the number.

For sites that compute their own intensity (a cron job, a sidecar). The value's age is
the file's: a job that stopped writing leaves a file that grows stale, and after
staleness_seconds the static intensity takes over. The file is parsed again only when
it changes. Write it atomically (write a temporary file, then rename it over this one):
a half-written file is an error, and the last good value is kept.
"""

from __future__ import annotations

import json
import os
import time

from carbonmeter import config
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.providers.http import Fetched, ProviderError, json_value, number, parse_path
from carbonmeter.config import ConfigError
from carbonmeter.config.yamlfile import read_file
from carbonmeter.units import to_g_per_kwh


class FileProvider:
    def __init__(self, cfg: config.ProviderConfig, name: str, where: str) -> None:
        assert cfg.path is not None and cfg.unit is not None
        try:
            self.steps = parse_path(cfg.json_path) if cfg.json_path else None
        except ValueError as e:
            raise ConfigError(f"{where}.json_path: {e}") from None
        self.name = name
        self.path = cfg.path
        self.unit = cfg.unit
        self.zone = cfg.zone or "custom"
        self.json_path = cfg.json_path
        self._seen: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) parsed
        self._value: Intensity | None = None

    def fetch(self) -> Fetched:
        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._seen or self._value is None:
                text = read_file(self.path, 1 << 20).decode("utf-8")  # never a FIFO's wait
                self._value = self._parse(text)
                self._seen = key
        except OSError as e:
            raise ProviderError(f"{self.path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ProviderError(f"{self.path}: not UTF-8 text") from None
        except ValueError as e:
            raise ProviderError(f"{self.path}: {e}, more than an intensity") from None
        return Fetched(self._value, age_seconds=time.time() - st.st_mtime)

    def _parse(self, text: str) -> Intensity:
        if not text.strip():
            raise ProviderError(f"{self.path}: empty (written in place rather than renamed?)")
        if self.steps is None:
            value = number(text.strip(), self.path)
        else:
            try:
                doc = json.loads(text)
            except ValueError:
                raise ProviderError(f"{self.path}: not valid JSON") from None
            value = number(json_value(doc, self.steps, self.path),
                           f"{self.path} {self.json_path}")
        return Intensity(to_g_per_kwh(value, self.unit), self.zone, self.name,
                         f"file {self.path} ({self.unit})")
