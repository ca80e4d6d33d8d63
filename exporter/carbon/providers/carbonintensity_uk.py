"""The UK Carbon Intensity API (NESO, no key): Great Britain's intensity now.

National: GET {base}/intensity -> {"data": [{"from", "to", "intensity": {"forecast",
"actual", "index"}}]}; `actual` is null until the half hour is measured, so the forecast is
used then. Regional: GET {base}/regional/regionid/{1..17} (or /regional/postcode/{RG10})
-> {"data": [{"regionid", "shortname", "data": [{"from", "to", "intensity": {"forecast",
"index"}, "generationmix"}]}]}; regions have forecasts only. Some answers give `data` as
one object instead of a list of one; both are read.
"""

from __future__ import annotations

from typing import Any

from carbonmeter import config
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.providers.http import Fetched, ProviderError, get_json, json_value, number

BASE = "https://api.carbonintensity.org.uk"


class CarbonIntensityUK:
    def __init__(self, cfg: config.ProviderConfig, name: str) -> None:
        self.name = name
        self.timeout = cfg.timeout_seconds
        base = (cfg.url or BASE).rstrip("/")
        zone = cfg.zone
        if zone is None:
            self.url, self.regional = f"{base}/intensity", False
        elif zone.isdigit():
            self.url, self.regional = f"{base}/regional/regionid/{int(zone)}", True
        else:
            self.url, self.regional = f"{base}/regional/postcode/{zone.upper()}", True

    def fetch(self) -> Fetched:
        doc = get_json(self.url, {}, self.timeout)
        where = "Carbon Intensity API"
        data = json_value(doc, ("data",), where)
        region = "GB"
        place = "Great Britain"
        if self.regional:
            entry = data[0] if isinstance(data, list) and data else data
            if not isinstance(entry, dict):
                raise ProviderError(f"{where}: no region in the answer")
            region = f"GB-{entry.get('regionid', '?')}"
            place = str(entry.get("shortname") or region)
            data = json_value(entry, ("data",), where)
        period: Any = json_value(data, (0,), where)
        intensity = json_value(period, ("intensity",), where)
        which = "actual"
        value = intensity.get("actual") if isinstance(intensity, dict) else None
        if value is None:
            which = "forecast"
            value = json_value(intensity, ("forecast",), where)
        g = number(value, f"{where} intensity.{which}")
        return Fetched(Intensity(
            g, region, self.name, f"UK Carbon Intensity API, {place}, {which} for "
            f"{period.get('from', '?')} to {period.get('to', '?')}"))
