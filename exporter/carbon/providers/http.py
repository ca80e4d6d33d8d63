"""What every live provider shares: one bounded HTTP GET of JSON, secrets, JSON paths.

The standard library's urllib is enough for one GET every few minutes; what it lacks (a
deadline for the whole body, no redirects that would carry a token to another host, errors
that say what to do) is the code below. urllib.request loads ssl and email, tens of
milliseconds: it is imported by the first fetch, in a provider's thread, not at start-up.
Secrets are read where they are sent and appear in no message: errors name the environment
variable or file, never its content, and URLs are shown without their query string.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.parse
from dataclasses import dataclass
from functools import cache
from typing import Any

from carbonmeter.carbon.intensity import Intensity
from carbonmeter.config import ConfigError
from carbonmeter.config.yamlfile import read_file
from carbonmeter.version import version

MAX_BODY = 1 << 20  # an intensity is a few hundred bytes; anything past 1 MiB is a mistake
MAX_SECRET = 64 << 10  # a token or password; a mounted secret file is a few hundred bytes
MAX_RETRY_AFTER = 86_400.0


class ProviderError(Exception):
    """A failed fetch. str() is one line for the log, free of secrets."""


class AuthError(ProviderError):
    """401/403: the credentials are wrong or expired."""


class RetryLater(ProviderError):
    """429: the service asked us to wait `retry_after` seconds (None: it did not say)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Fetched:
    intensity: Intensity
    age_seconds: float = 0.0  # how old the value already was when fetched (a file's mtime)


class Secret:
    """A token or password from an environment variable or a file, read when needed (a
    mounted Kubernetes secret is rotated in place). Never printed: see __repr__."""

    def __init__(self, where: str, env: str | None, path: str | None) -> None:
        self.env, self.path = env, path
        self.what = f"environment variable {env}" if env else f"file {path}"
        try:
            self.get()
        except ProviderError as e:
            key = "secret_env" if env else "secret_file"
            raise ConfigError(f"{where}.{key}: {e}") from None

    def get(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env, "").strip()
            if not value:
                raise ProviderError(f"environment variable {self.env} is not set or empty")
            return value
        assert self.path is not None
        try:
            value = read_file(self.path, MAX_SECRET).decode("utf-8").strip()
        except OSError as e:
            raise ProviderError(f"cannot read {self.path}: {e.strerror or e}") from None
        except UnicodeDecodeError:
            raise ProviderError(f"{self.path} is not UTF-8 text") from None
        except ValueError as e:  # beyond the limit: no secret is that long
            raise ProviderError(f"{self.path}: {e}, more than a secret") from None
        if not value:
            raise ProviderError(f"{self.path} is empty")
        return value

    def __repr__(self) -> str:
        return f"Secret({self.what})"


def secret(where: str, env: str | None, path: str | None) -> Secret | None:
    return Secret(where, env, path) if env or path else None


def safe_url(url: str) -> str:
    """The URL without query string or user info, which may carry keys."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


@cache
def _opener() -> Any:
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        """A redirect would resend our auth headers to wherever it points: refuse it."""

        def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str,
                             headers: Any, newurl: str) -> None:
            fp.close()
            raise ProviderError(f"{safe_url(req.full_url)} redirects (HTTP {code}) to "
                                f"{safe_url(newurl)}; configure the final address as url")

    return urllib.request.build_opener(NoRedirect)


def get_json(url: str, headers: dict[str, str], timeout: float) -> Any:
    """GET `url` and parse its JSON body, all within `timeout` seconds.

    urllib's timeout bounds each socket operation, so a server that trickles its body
    byte by byte would hold us forever; the body is therefore read in chunks against a
    deadline.
    """
    import urllib.error
    import urllib.request

    shown = safe_url(url)
    opener = _opener()
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url, headers={
        "Accept": "application/json", "User-Agent": f"carbonmeter/{version()}", **headers})
    try:
        with opener.open(req, timeout=timeout) as resp:
            body = _read(resp, deadline, shown, timeout)
    except urllib.error.HTTPError as e:
        retry_after = _retry_after(e.headers.get("Retry-After"))
        e.close()
        what = f"{shown}: HTTP {e.code} {e.reason}"
        if e.code == 429:
            wait = f"; retrying after {retry_after:g} s" if retry_after is not None else ""
            raise RetryLater(f"{what} (rate limited){wait}", retry_after) from None
        if e.code in (401, 403):
            raise AuthError(what) from None
        raise ProviderError(what) from None
    except urllib.error.URLError as e:
        raise ProviderError(f"{shown}: cannot connect: {_reason(e.reason)}") from None
    except TimeoutError:
        raise ProviderError(f"{shown}: no answer within {timeout:g} s") from None
    except OSError as e:
        raise ProviderError(f"{shown}: {_reason(e)}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise ProviderError(f"{shown}: the response is not valid JSON ({len(body)} bytes, "
                            f"starting {body[:40]!r})") from None


def _read(resp: Any, deadline: float, shown: str, timeout: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        if time.monotonic() > deadline:
            raise ProviderError(f"{shown}: the response took longer than {timeout:g} s")
        chunk = resp.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY:
            raise ProviderError(f"{shown}: the response is larger than {MAX_BODY} bytes")
        chunks.append(chunk)


def _reason(e: object) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def _retry_after(value: str | None) -> float | None:
    """Retry-After is seconds or an HTTP date (RFC 9110 10.2.3); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(when.timestamp() - time.time(), 0.0), MAX_RETRY_AFTER)


_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def parse_path(text: str) -> tuple[str | int, ...]:
    """`data[0].intensity.actual` (or `data.0.intensity.actual`, `$.` optional) -> steps."""
    rest = text.strip()
    rest = rest[1:] if rest.startswith("$") else rest
    steps: list[str | int] = []
    pos = 0
    while pos < len(rest):
        m = _STEP.match(rest, pos)
        if m is None:
            raise ValueError(f"'{text}' is not a path such as data[0].intensity.actual")
        steps.append(int(m.group(2)) if m.group(2) is not None else m.group(1))
        pos = m.end()
    if not steps:
        raise ValueError(f"'{text}' is empty; give a path such as data[0].intensity.actual")
    return tuple(steps)


def json_value(doc: Any, steps: tuple[str | int, ...], shown: str) -> Any:
    """The value at `steps` in `doc`; ProviderError naming where the path stopped."""
    here: Any = doc
    walked = ""
    for step in steps:
        if isinstance(here, list) and (isinstance(step, int) or str(step).isdigit()):
            i = int(step)
            if i >= len(here):
                raise ProviderError(f"{shown}: no item {i} in {walked or 'the response'} "
                                    f"({len(here)} items)")
            here = here[i]
            walked += f"[{i}]"
        elif isinstance(here, dict) and str(step) in here:
            here = here[str(step)]
            walked += f".{step}" if walked else str(step)
        else:
            raise ProviderError(f"{shown}: no '{step}' in {walked or 'the response'}")
    return here


def number(value: Any, what: str) -> float:
    """A finite, non-negative number from JSON (numbers in strings too)."""
    if isinstance(value, bool) or value is None:
        raise ProviderError(f"{what} is {json.dumps(value)}, not a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ProviderError(f"{what} is {json.dumps(value)[:40]}, not a number") from None
    if out != out or out in (float("inf"), float("-inf")) or out < 0:
        raise ProviderError(f"{what} is {out}, not a usable intensity")
    return out
