"""Electricity Maps, API v3 `carbon-intensity/latest`: a zone's intensity now.

GET {base}/v3/carbon-intensity/latest?zone=Z with the token in the `auth-token` header;
the answer is {"zone", "carbonIntensity" (gCO2eq/kWh), "datetime", "updatedAt",
"emissionFactorType" ("lifecycle" by default, or "direct"), "isEstimated", ...}.
"""

from __future__ import annotations

import urllib.parse

from carbonmeter import config
from carbonmeter.carbon.intensity import Intensity
from carbonmeter.carbon.providers.http import Fetched, Secret, get_json, json_value, number

BASE = "https://api.electricitymaps.com"


class ElectricityMaps:
    def __init__(self, cfg: config.ProviderConfig, name: str, token: Secret) -> None:
        assert cfg.zone is not None
        self.name = name
        self.zone = cfg.zone
        self.token = token
        self.timeout = cfg.timeout_seconds
        self.url = (f"{(cfg.url or BASE).rstrip('/')}/v3/carbon-intensity/latest?"
                    + urllib.parse.urlencode({"zone": cfg.zone}))

    def fetch(self) -> Fetched:
        doc = get_json(self.url, {"auth-token": self.token.get()}, self.timeout)
        value = number(json_value(doc, ("carbonIntensity",), "Electricity Maps"),
                       "Electricity Maps carbonIntensity")
        zone = str(doc.get("zone") or self.zone)
        basis = doc.get("emissionFactorType") or "lifecycle"
        estimated = ", estimated" if doc.get("isEstimated") else ""
        return Fetched(Intensity(value, zone, self.name,
                                 f"Electricity Maps, zone {zone}, {basis}{estimated}, "
                                 f"for {doc.get('datetime', 'an unstated time')}"))
