"""Whole-server power from the BMC's Redfish service.

``/redfish/v1/Chassis`` lists the chassis; for each, the first of these that gives a number
is its power in watts, newest schema first:

- ``EnvironmentMetrics``: ``PowerWatts.Reading`` (Redfish 2020.4 and later);
- ``Power``: ``PowerControl[].PowerConsumedWatts`` (the classic resource, deprecated but
  what most BMCs serve);
- ``PowerSubsystem``: the sum of each power supply's ``Metrics`` ``InputPowerWatts.Reading``.

A chassis that contains another chassis reporting power (an enclosure and its servers) is
left out by default, so nothing is counted twice; ``redfish.chassis`` chooses explicitly.
Each chassis read is a device of kind platform measuring the whole host (scope host).

Credentials come from the configuration's user name and a password read from an environment
variable or a file; they are sent to the BMC and never logged. TLS certificates are verified
unless configured otherwise. ``urllib`` is imported only when this probe runs.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from carbonmeter.probes.base import (
    HOST,
    Device,
    Probe,
    ProbeContext,
    ProbeRead,
    ProbeSpec,
    ProbeUnavailable,
    Reading,
    limits,
)

log = logging.getLogger(__name__)

CHASSIS = "/redfish/v1/Chassis"
SESSIONS = "/redfish/v1/SessionService/Sessions"


class RedfishError(Exception):
    """A request that failed; str() is one line a person can act on (never a secret)."""


def load_password(env_name: str, file: str | None, environ: dict[str, str] | None = None
                  ) -> str | None:
    """The BMC password from `file` (a mounted secret) or environment variable `env_name`."""
    if file:
        try:  # without blocking, and only a regular file: a FIFO or device never ends
            fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise OSError(errno.EINVAL, "not a regular file")
                data = f.read(64 << 10)
            return data.decode("utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else "not UTF-8 text"
            raise ProbeUnavailable(f"cannot read redfish.password_file {file}: {why}") from e
    return (os.environ if environ is None else environ).get(env_name)


class Client:
    """GETs JSON from one Redfish service with basic or session authentication."""

    def __init__(self, url: str, *, username: str | None, password: str | None,
                 auth: str = "basic", verify_tls: bool = True, ca_file: str | None = None,
                 timeout: float = 5.0) -> None:
        import ssl
        import urllib.request

        self.base = url.rstrip("/")
        self._user, self._password, self._auth = username, password, auth
        self._timeout = timeout
        if verify_tls:
            context = ssl.create_default_context(cafile=ca_file)
        else:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
        self._token: str | None = None
        self._session: str | None = None

    def get(self, path: str) -> dict[str, Any]:
        if self._auth == "session" and self._token is None:
            self._login()
        try:
            return _json(*self._request("GET", path))
        except _Unauthorized:
            if self._auth != "session":
                raise RedfishError(self._refused()) from None
            self._token = None  # the session expired or the BMC restarted: once more
            self._login()
            try:
                return _json(*self._request("GET", path))
            except _Unauthorized:
                raise RedfishError(self._refused()) from None

    def close(self) -> None:
        if self._session:
            try:
                self._request("DELETE", self._session)
            except (RedfishError, _Unauthorized) as e:
                log.debug("redfish: deleting the session: %s", e)
            self._session = self._token = None

    def _login(self) -> None:
        body = json.dumps({"UserName": self._user or "", "Password": self._password or ""})
        try:
            _, headers = self._request("POST", SESSIONS, body.encode())
        except _Unauthorized:
            raise RedfishError(self._refused()) from None
        self._token = headers.get("X-Auth-Token")
        if not self._token:
            raise RedfishError(f"{self.base}{SESSIONS} gave no X-Auth-Token: use "
                               "redfish.auth: basic")
        location = headers.get("Location") or ""
        self._session = re.sub(r"^https?://[^/]+", "", location) or None

    def _request(self, method: str, path: str, body: bytes | None = None,
                 ) -> tuple[bytes, Any]:
        """(body, headers) of a 2xx answer; _Unauthorized on 401, else RedfishError."""
        import urllib.error
        import urllib.request

        url = path if path.startswith("http") else self.base + path
        headers = {"Accept": "application/json", "OData-Version": "4.0"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["X-Auth-Token"] = self._token
        elif self._auth == "basic" and self._user is not None:
            pair = f"{self._user}:{self._password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=self._timeout) as resp:
                return resp.read(), resp.headers
        except urllib.error.HTTPError as e:
            e.close()
            if e.code == 401:
                raise _Unauthorized() from None
            raise RedfishError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            raise RedfishError(self._unreachable(url, e.reason)) from None
        except (TimeoutError, OSError) as e:
            raise RedfishError(self._unreachable(url, e)) from None

    def _refused(self) -> str:
        who = f"user {self._user!r}" if self._user else "no user (set redfish.username)"
        return (f"{self.base} refused the credentials (HTTP 401) for {who}: check "
                "redfish.username and the password (redfish.password_env or password_file)")

    def _unreachable(self, url: str, reason: object) -> str:
        import ssl

        if isinstance(reason, ssl.SSLCertVerificationError):
            return (f"{url}: the BMC's TLS certificate is not trusted ({reason.verify_message}):"
                    " set redfish.ca_file to the CA that signed it, or redfish.verify_tls: false")
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"{url}: no answer within {self._timeout:g} s (redfish.timeout_seconds)"
        text = getattr(reason, "strerror", None) or str(reason)
        return f"{url}: cannot connect: {text}"


class _Unauthorized(Exception):
    pass


def _json(body: bytes, headers: Any) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError as e:
        raise RedfishError(f"the BMC answered something that is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise RedfishError("the BMC answered JSON that is not a Redfish resource")
    return data


@dataclass(frozen=True)
class _Source:
    what: str  # how the chassis reports power, for `carbonmeter probes`
    uris: tuple[str, ...]
    index: int = 0  # PowerControl member

    def watts(self, client: Client) -> float | None:
        if self.what.startswith("EnvironmentMetrics"):
            return _number(_dig(client.get(self.uris[0]), "PowerWatts", "Reading"))
        if self.what.startswith("Power "):
            controls = client.get(self.uris[0]).get("PowerControl") or []
            entry = controls[self.index] if self.index < len(controls) else {}
            return _number(entry.get("PowerConsumedWatts"))
        values = [_number(_dig(client.get(u), "InputPowerWatts", "Reading")) for u in self.uris]
        return None if None in values else sum(v for v in values if v is not None)


class RedfishProbe(Probe):
    """One device per chassis read: ``chassis-<Id>``, kind platform, the whole host."""

    name = "redfish"
    covers = frozenset()  # a whole-host meter replaces no component source

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 auth: str = "basic", verify_tls: bool = True, ca_file: str | None = None,
                 timeout: float = 5.0, chassis: Sequence[str] = ()) -> None:
        self._client = Client(url, username=username, password=password, auth=auth,
                              verify_tls=verify_tls, ca_file=ca_file, timeout=timeout)
        self.skipped: list[tuple[str, str]] = []
        try:
            self._sources = self._discover(set(chassis))
        except RedfishError as e:
            self._client.close()
            raise ProbeUnavailable(str(e)) from e
        if not self._sources:
            self._client.close()
            found = "; ".join(f"{c}: {why}" for c, why in self.skipped) or "no chassis"
            raise ProbeUnavailable(f"no chassis at {url}{CHASSIS} reports power ({found})")
        self.devices = tuple(d for d, _ in self._sources)
        self.modes = {d.id: f"{s.what}; the whole host" for d, s in self._sources}

    def read(self) -> ProbeRead:
        readings, errors = [], []
        for device, source in self._sources:
            try:
                watts = source.watts(self._client)
            except (RedfishError, LookupError, TypeError) as e:
                errors.append(f"redfish {device.id}: {e}")
                continue
            if watts is None:
                errors.append(f"redfish {device.id}: the BMC gives no power reading now "
                              "(chassis powered off?)")
                continue
            readings.append(Reading(device, power_w=watts))
        return ProbeRead(readings, errors)

    def close(self) -> None:
        self._client.close()

    def _discover(self, wanted: set[str]) -> list[tuple[Device, _Source]]:
        members = self._client.get(CHASSIS).get("Members") or []
        found: dict[str, tuple[str, str, _Source]] = {}  # uri -> (Id, Name, source)
        contains: dict[str, list[str]] = {}
        for member in members:
            uri = member.get("@odata.id", "")
            chassis = self._client.get(uri)
            cid = str(chassis.get("Id") or uri.rstrip("/").rsplit("/", 1)[-1])
            if wanted and cid not in wanted:
                self.skipped.append((cid, "not in redfish.chassis"))
                continue
            source = self._source(chassis)
            if source is None:
                self.skipped.append((cid, "reports no power"))
                continue
            found[uri.rstrip("/")] = (cid, str(chassis.get("Name") or cid), source)
            links = _dig(chassis, "Links", "Contains") or []
            contains[uri.rstrip("/")] = [str(x.get("@odata.id", "")).rstrip("/") for x in links
                                         if isinstance(x, dict)]
        missing = wanted - {cid for cid, _, _ in found.values()}
        if missing:
            raise RedfishError(f"redfish.chassis {sorted(missing)} not found or without power "
                               f"at {self._client.base}{CHASSIS}")
        chosen = []
        for uri, (cid, name, source) in found.items():
            inner = [found[u][0] for u in contains[uri] if u in found]
            if inner and not wanted:
                self.skipped.append((cid, f"contains chassis {', '.join(inner)}, which report"
                                          " their own power"))
                continue
            slug = "-".join(re.findall(r"[a-z0-9]+", cid.lower())) or "0"
            device = Device(f"chassis-{slug}", "platform", self.name, name=name, scope=HOST)
            chosen.append((device, source))
        return chosen

    def _source(self, chassis: dict[str, Any]) -> _Source | None:
        env = _dig(chassis, "EnvironmentMetrics", "@odata.id")
        if env and _number(_dig(self._try(env), "PowerWatts", "Reading")) is not None:
            return _Source("EnvironmentMetrics PowerWatts", (env,))
        power = _dig(chassis, "Power", "@odata.id")
        if power:
            for i, control in enumerate(self._try(power).get("PowerControl") or []):
                if isinstance(control, dict) and _number(control.get("PowerConsumedWatts")) \
                        is not None:
                    return _Source(f"Power PowerControl[{i}] PowerConsumedWatts", (power,), i)
        subsystem = _dig(chassis, "PowerSubsystem", "@odata.id")
        supplies = _dig(self._try(subsystem), "PowerSupplies", "@odata.id") if subsystem else None
        metrics = []
        for member in (self._try(supplies).get("Members") or []) if supplies else []:
            uri = _dig(self._try(member.get("@odata.id", "")), "Metrics", "@odata.id")
            if uri and _number(_dig(self._try(uri), "InputPowerWatts", "Reading")) is not None:
                metrics.append(uri)
        if metrics:
            return _Source("PowerSubsystem power supplies' InputPowerWatts", tuple(metrics))
        return None

    def _try(self, uri: str) -> dict[str, Any]:
        """A resource that may be missing (404 on older BMCs): empty rather than an error."""
        try:
            return self._client.get(uri) if uri else {}
        except RedfishError as e:
            if "refused the credentials" in str(e):
                raise
            log.debug("redfish: %s", e)
            return {}


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


@dataclass(frozen=True)
class RedfishConfig:
    """Section `redfish`: the BMC's Redfish service, when `url` is set."""

    url: str | None = field(**limits(check="base_url"))
    username: str | None
    password_env: str
    password_file: str | None = field(**limits(check="path"))
    auth: str = field(**limits(choices=("basic", "session")))
    verify_tls: bool
    ca_file: str | None = field(**limits(check="path"))
    timeout_seconds: float = field(**limits(min=0.5, max=120))
    chassis: list[str]


def _make(settings: RedfishConfig, ctx: ProbeContext) -> RedfishProbe:
    s = settings
    if not s.url:
        raise ProbeUnavailable("no redfish.url configured")
    return RedfishProbe(s.url, username=s.username,
                        password=load_password(s.password_env, s.password_file),
                        auth=s.auth, verify_tls=s.verify_tls, ca_file=s.ca_file,
                        timeout=s.timeout_seconds, chassis=s.chassis)


# The BMC is preferred to IPMI (order 80): one whole-host meter is enough.
SPEC = ProbeSpec("redfish", order=70, make=_make, section="redfish", settings=RedfishConfig,
                 replaces=frozenset({HOST}))
