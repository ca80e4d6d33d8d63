"""WattTime API v3: the marginal operating emissions rate (MOER) of a grid region now.

Log in with HTTP basic auth at {base}/login for a bearer token (valid 30 minutes; renewed
after 25, and at once when a request answers 401), then GET {base}/v3/forecast?region=R&
signal_type=co2_moer&horizon_hours=0, whose first point is the current MOER:
{"data": [{"point_time", "value"}], "meta": {"units": "lbs_co2_per_mwh", "region", ...}}.

MOER is marginal: what one more kWh emits now, not the grid's average. It is converted
from lb/MWh to g/kWh and labelled signal="marginal"; reports must not mix it with averages.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Callable

from carbonmeter import config
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.providers.http import (
    AuthError,
    Fetched,
    ProviderError,
    Secret,
    get_json,
    json_value,
    number,
)
from carbonmeter.units import to_g_per_kwh

BASE = "https://api.watttime.org"
RENEW_AFTER = 25 * 60  # tokens live 30 minutes
UNITS = {"lbs_co2_per_mwh": "lb_per_mwh", "kg_co2_per_mwh": "kg_per_mwh",
         "g_co2_per_kwh": "g_per_kwh"}


class WattTime:
    def __init__(self, cfg: config.ProviderConfig, name: str, password: Secret,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert cfg.zone is not None and cfg.username is not None
        self.name = name
        self.region = cfg.zone
        self.username = cfg.username
        self.password = password
        self.timeout = cfg.timeout_seconds
        self.clock = clock
        base = (cfg.url or BASE).rstrip("/")
        self.login_url = f"{base}/login"
        self.data_url = f"{base}/v3/forecast?" + urllib.parse.urlencode(
            {"region": cfg.zone, "signal_type": "co2_moer", "horizon_hours": 0})
        self._token: tuple[str, float] | None = None  # (token, when obtained)

    def _login(self) -> str:
        pair = f"{self.username}:{self.password.get()}".encode()
        try:
            doc = get_json(self.login_url,
                           {"Authorization": "Basic " + base64.b64encode(pair).decode()},
                           self.timeout)
        except AuthError as e:
            raise AuthError(f"{e}: WattTime refused user {self.username} with the password "
                            f"in {self.password.what}") from None
        token = json_value(doc, ("token",), "WattTime login")
        if not isinstance(token, str) or not token:
            raise ProviderError("WattTime login: the answer has no token")
        self._token = (token, self.clock())
        return token

    def _bearer(self) -> str:
        if self._token is None or self.clock() - self._token[1] > RENEW_AFTER:
            return self._login()
        return self._token[0]

    def fetch(self) -> Fetched:
        try:
            doc = get_json(self.data_url, {"Authorization": f"Bearer {self._bearer()}"},
                           self.timeout)
        except AuthError:  # expired early or revoked: log in again, once
            self._token = None
            doc = get_json(self.data_url, {"Authorization": f"Bearer {self._login()}"},
                           self.timeout)
        point = json_value(doc, ("data", 0), "WattTime forecast")
        value = number(json_value(point, ("value",), "WattTime forecast data[0]"),
                       "WattTime MOER")
        units = doc.get("meta", {}).get("units") if isinstance(doc, dict) else None
        if units is None:
            raise ProviderError("WattTime forecast: no meta.units in the answer; the unit is "
                                "not guessed")
        if units not in UNITS:
            raise ProviderError(f"WattTime forecast: unknown units '{units}' (known: "
                                f"{', '.join(UNITS)})")
        g = to_g_per_kwh(value, UNITS[units])
        return Fetched(Intensity(
            g, self.region, self.name,
            f"WattTime MOER (marginal), region {self.region}, {value:g} {units} at "
            f"{point.get('point_time', 'an unstated time')}", signal="marginal"))
