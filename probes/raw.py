"""Raw values as drivers render them in sysfs, checked before they are believed.

A sysfs energy or power attribute is one decimal integer and a newline (the kernel's
``%llu``/``%ld``). Anything else, a value beyond what the attribute can hold, or beyond the
range its driver declares, is an error for that read: the exporter counts nothing for it
and keeps the last good value as the baseline. ``int()`` alone would take ``" +1_0"``,
``-5`` or forty digits.
"""

from __future__ import annotations

MAX_DIGITS = 20  # 2**64 - 1, the widest counter a driver keeps, has 20 digits
U64_MAX = 2**64 - 1
S64_MAX = 2**63 - 1  # hwmon renders its values as long / long long


class BadValue(ValueError):
    """The file holds something other than a decimal integer within its range."""


def decimal(data: bytes, top: int) -> int:
    """The non-negative decimal integer in `data` (surrounding whitespace allowed), at most
    `top`; BadValue otherwise. An empty read raises plain ValueError: a file that vanished
    under an open descriptor (a removed zone or chip), not a bad value."""
    text = data.strip()
    if not text:
        raise ValueError("empty read")
    if len(text) > MAX_DIGITS or not text.isdigit():
        shown = text[:24].decode("ascii", "backslashreplace")
        raise BadValue(f"{shown!r}{'...' if len(text) > 24 else ''} is not a decimal integer")
    value = int(text)
    if value > top:
        raise BadValue(f"{value} is beyond its range (at most {top})")
    return value
