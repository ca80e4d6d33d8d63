"""TLS and basic authentication from a Prometheus exporter-toolkit web configuration file.

The same file node_exporter takes as --web.config.file works here:

    tls_server_config:
      cert_file: server.crt          # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional, with client_ca_file
      client_ca_file: ca.crt
      min_version: TLS12             # TLS10 .. TLS13; default TLS12
    basic_auth_users:
      prometheus: $2y$10$...         # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}

Settings of the toolkit that Python's ssl module cannot honour (cipher_suites,
curve_preferences, client_allowed_sans, ...) are refused by name rather than ignored.
bcrypt is imported only when basic_auth_users is set.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonmeter.config import ConfigError, read_yaml
from carbonmeter.config.checks import unknown_key

TOP = ("tls_server_config", "http_server_config", "basic_auth_users")
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version")
TOOLKIT_ONLY = ("cert", "key", "client_ca", "cipher_suites", "curve_preferences",
                "prefer_server_cipher_suites", "client_allowed_sans")
HTTP_KEYS = ("http2", "headers")
# the response headers the exporter-toolkit lets a web config set
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
           "X-XSS-Protection", "Strict-Transport-Security")
VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
            "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# Go can request or require a client certificate without verifying it; OpenSSL through
# Python's ssl module cannot, so these are refused with the alternatives named.
CLIENT_AUTH_UNSUPPORTED = ("RequestClientCert", "RequireAnyClientCert")


@dataclass
class WebConfig:
    source: str
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def auth(self) -> BasicAuth | None:
        return BasicAuth(self.users) if self.users else None


def load(path: str) -> WebConfig:
    """Read and check a web configuration; ConfigError names the file, key and what is
    allowed. Certificates and keys are loaded here, so a bad one stops the start."""
    p = Path(path)
    doc = read_yaml(p)
    if doc is None:
        return WebConfig(str(p))
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of {', '.join(TOP)}")
    for key in doc:
        if key not in TOP:
            raise unknown_key(str(p), str(key), TOP)
    cfg = WebConfig(str(p))
    tls = _section(p, doc, "tls_server_config")
    if tls:
        cfg.tls = _tls(p, tls)
    http = _section(p, doc, "http_server_config")
    for key, value in http.items():
        if key not in HTTP_KEYS:
            raise unknown_key(str(p), f"http_server_config.{key}",
                           [f"http_server_config.{k}" for k in HTTP_KEYS])
        if key == "http2" and not isinstance(value, bool):
            raise ConfigError(f"{p}: http_server_config.http2: must be true or false "
                              "(carbonmeter speaks HTTP/1.1 either way)")
    cfg.headers = _headers(p, http.get("headers"))
    users = _section(p, doc, "basic_auth_users")
    for user, hashed in users.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{p}: basic_auth_users: user name {user!r} must be a non-empty "
                              "string without ':'")
        if not (isinstance(hashed, str) and hashed[:4] in ("$2a$", "$2b$", "$2y$")
                and len(hashed) == 60):
            raise ConfigError(f"{p}: basic_auth_users.{user}: must be a bcrypt hash ($2a$, "
                              "$2b$ or $2y$, 60 characters), e.g. from "
                              "`htpasswd -nBC 10 \"\" | tr -d ':\\n'`")
        cfg.users[user] = hashed.encode()
    if cfg.users:
        try:
            import bcrypt  # noqa: F401  (checked now, used by BasicAuth)
        except ImportError:
            raise ConfigError(f"{p}: basic_auth_users needs the bcrypt package: "
                              "pip install bcrypt") from None
    return cfg


def _section(p: Path, doc: dict[str, Any], name: str) -> dict[Any, Any]:
    value = doc.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{p}: {name}: must be a mapping, got {type(value).__name__}")
    return value


def _file(p: Path, tls: dict[str, Any], key: str) -> str:
    value = tls.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{p}: tls_server_config.{key}: must be the path of a PEM file")
    path = Path(value) if os.path.isabs(value) else p.parent / value
    if not path.is_file():
        raise ConfigError(f"{p}: tls_server_config.{key}: {path} is not a readable file")
    return str(path)


def _tls(p: Path, tls: dict[Any, Any]) -> ssl.SSLContext:
    for key in tls:
        if key in TOOLKIT_ONLY:
            raise ConfigError(f"{p}: tls_server_config.{key} is not supported by carbonmeter "
                              f"(supported: {', '.join(TLS_KEYS)})")
        if key not in TLS_KEYS:
            raise unknown_key(str(p), f"tls_server_config.{key}",
                           [f"tls_server_config.{k}" for k in TLS_KEYS])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for key, default, attr in (("min_version", "TLS12", "minimum_version"),
                               ("max_version", "TLS13", "maximum_version")):
        value = tls.get(key) or default
        if value not in VERSIONS:
            raise ConfigError(f"{p}: tls_server_config.{key}: {value!r} is not one of "
                              f"{', '.join(VERSIONS)}")
        setattr(ctx, attr, VERSIONS[value])
    if ctx.minimum_version > ctx.maximum_version:
        raise ConfigError(f"{p}: tls_server_config: min_version is above max_version")
    cert, key = _file(p, tls, "cert_file"), _file(p, tls, "key_file")
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"{p}: tls_server_config.cert_file/key_file: cannot load {cert} "
                          f"with {key}: {getattr(e, 'reason', None) or e}") from None
    auth = tls.get("client_auth_type") or "NoClientCert"
    if auth in CLIENT_AUTH_UNSUPPORTED or auth not in CLIENT_AUTH:
        why = " is not supported by carbonmeter" if auth in CLIENT_AUTH_UNSUPPORTED else ""
        raise ConfigError(f"{p}: tls_server_config.client_auth_type: {auth!r}{why}; allowed: "
                          f"{', '.join(CLIENT_AUTH)}")
    if CLIENT_AUTH[auth] != ssl.CERT_NONE:
        ca = _file(p, tls, "client_ca_file")
        try:
            ctx.load_verify_locations(ca)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"{p}: tls_server_config.client_ca_file: cannot load {ca}: "
                              f"{getattr(e, 'reason', None) or e}") from None
        ctx.verify_mode = CLIENT_AUTH[auth]
    elif tls.get("client_ca_file"):
        raise ConfigError(f"{p}: tls_server_config.client_ca_file is set but client_auth_type "
                          "is NoClientCert: set client_auth_type to VerifyClientCertIfGiven or "
                          "RequireAndVerifyClientCert")
    return ctx


def _headers(p: Path, headers: Any) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise ConfigError(f"{p}: http_server_config.headers: must be a mapping")
    out = {}
    for name, value in headers.items():
        canonical = next((h for h in HEADERS if h.lower() == str(name).lower()), None)
        if canonical is None:
            raise ConfigError(f"{p}: http_server_config.headers.{name}: not allowed "
                              f"(allowed: {', '.join(HEADERS)})")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ConfigError(f"{p}: http_server_config.headers.{name}: must be one line "
                              "of text")
        out[canonical] = value
    return out


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes.

    bcrypt is slow on purpose (tens to hundreds of ms); a verified header is remembered
    (as a salted digest, never the password) so a scraper pays it once, and `check` runs
    off the event loop. A header that failed is remembered too, for FAILED_TTL_S, so
    repeating a wrong password costs no bcrypt. An unknown user costs the same as a wrong
    password, so timing does not tell which users exist."""

    MAX_CACHED = 256
    MAX_FAILED = 4096
    FAILED_TTL_S = 60.0

    def __init__(self, users: dict[str, bytes]) -> None:
        import bcrypt

        self._bcrypt = bcrypt
        self._users = users
        self._dummy = next(iter(users.values()))
        self._salt = os.urandom(16)
        self._verified: set[bytes] = set()
        self._failed: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._lock = threading.Lock()  # check() runs on several threads

    def _digest(self, header: str) -> bytes:
        return hashlib.sha256(self._salt + header.encode("utf-8", "surrogateescape")).digest()

    def cached(self, header: str | None) -> bool | None:
        """True when this exact header was verified before, False when it failed within
        FAILED_TTL_S, None when bcrypt must tell (cheap, on the event loop)."""
        if header is None:
            return False
        digest = self._digest(header)
        if digest in self._verified:
            return True
        failed = self._failed.get(digest)
        if failed is not None and time.monotonic() - failed < self.FAILED_TTL_S:
            return False
        return None

    def _refused(self, header: str) -> bool:
        """Remember that `header` failed (a bounded table, oldest forgotten first)."""
        digest = self._digest(header)
        with self._lock:
            self._failed.pop(digest, None)
            self._failed[digest] = time.monotonic()
            while len(self._failed) > self.MAX_FAILED:
                self._failed.popitem(last=False)
        return False

    def check(self, header: str | None) -> bool:
        """Verify a header with bcrypt (slow: call it off the event loop)."""
        if header is None:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode(
                "utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return self._refused(header)
        hashed = self._users.get(user)
        try:
            ok = self._bcrypt.checkpw(password.encode(), hashed or self._dummy)
        except ValueError:  # longer than bcrypt's 72 bytes, or a damaged hash
            ok = False
        if not (ok and sep and hashed is not None):
            return self._refused(header)
        with self._lock:
            if len(self._verified) >= self.MAX_CACHED:
                self._verified.clear()
            self._verified.add(self._digest(header))
        return True
