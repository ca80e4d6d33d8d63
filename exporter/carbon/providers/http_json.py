"""Any HTTP service that answers JSON: a URL, headers, where the number is, and its unit.

For grid operators and in-house services the named providers do not cover. `${secret}`
in a header value stands for the configured secret, so a token can sit in a header
(`Authorization: "Bearer ${secret}"`) without being written in the configuration.
"""

from __future__ import annotations

from carbonmeter import config
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.providers.http import (
    Fetched,
    Secret,
    get_json,
    json_value,
    number,
    parse_path,
    safe_url,
)
from carbonmeter.config import ConfigError
from carbonmeter.units import to_g_per_kwh

PLACEHOLDER = "${secret}"


class HttpJson:
    def __init__(self, cfg: config.ProviderConfig, name: str, secret: Secret | None,
                 where: str) -> None:
        assert cfg.url is not None and cfg.json_path is not None and cfg.unit is not None
        if not cfg.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url: '{safe_url(cfg.url)}' must start with http:// "
                              "or https://")
        try:
            self.path = parse_path(cfg.json_path)
        except ValueError as e:
            raise ConfigError(f"{where}.json_path: {e}") from None
        uses = any(PLACEHOLDER in v for v in cfg.headers.values())
        if uses and secret is None:
            raise ConfigError(f"{where}.headers: ${{secret}} is used but neither secret_env "
                              "nor secret_file is set")
        self.name = name
        self.url = cfg.url
        self.headers = cfg.headers
        self.secret = secret
        self.unit = cfg.unit
        self.zone = cfg.zone or "custom"
        self.timeout = cfg.timeout_seconds
        self.shown = safe_url(cfg.url)
        self.json_path = cfg.json_path

    def fetch(self) -> Fetched:
        headers = self.headers
        if self.secret is not None:
            token = self.secret.get()
            headers = {k: v.replace(PLACEHOLDER, token) for k, v in headers.items()}
        doc = get_json(self.url, headers, self.timeout)
        value = number(json_value(doc, self.path, self.shown), f"{self.shown} {self.json_path}")
        return Fetched(Intensity(to_g_per_kwh(value, self.unit), self.zone, self.name,
                                 f"{self.shown}, {self.json_path} in {self.unit}"))
