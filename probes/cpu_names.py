"""CPU model names: one normal form, so a `/proc/cpuinfo` name finds its TDP.

Vendors spell one chip many ways: ``Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz`` in
`/proc/cpuinfo`, ``Intel Xeon Platinum 8375C`` on the product page. The bundled table
``config/cpu_tdp.csv`` stores its names already passed through `normalise_cpu_model`, and the
runtime passes the cpuinfo name through the same function, so the two meet. This module is the
only place that rule lives: ``config/sources/derive.py`` imports it to build the table.

The normal form, step by step (see `normalise_cpu_model`):

- lowercase; drop ``(R)``, ``(TM)``, ``®``, ``™`` and any other parenthesised note
  (``(OEM Only)``, ``(9M Cache, up to 4.00 GHz)``);
- cut trailing descriptions that start with ``with``, ``w/``, ``includes`` or ``and``
  (``with Radeon Graphics``, ``and Wraith cooler``);
- drop clock speeds (``@ 2.90GHz``, ``1066 MHz``), generation prefixes (``11th Gen``),
  core counts (``64-Core``, ``Dual-Core``) and marketing suffixes (``X-series``,
  ``Extreme Edition``, ``Microsoft Surface Edition``, ``Mobile Processor``);
- drop the words ``cpu``, ``processor``, ``apu`` and the vendor words ``intel``, ``amd``,
  ``genuine``, ``genuineintel``, ``authenticamd``: the family and model number identify the
  chip, and the vendor word is missing from some table rows and doubled in others;
- split ``core2`` into ``core 2``, join cpuinfo's ``i7 920`` into the product page's ``i7-920``;
  keep letters, digits and ``. + - /``; one space between words.

Examples::

    Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz    -> xeon platinum 8375c
    AMD EPYC 7763 64-Core Processor                  -> epyc 7763
    11th Gen Intel(R) Core(TM) i7-1165G7 @ 2.80GHz   -> core i7-1165g7
    AMD Ryzen 9 5950X 16-Core Processor              -> ryzen 9 5950x

Standard library only, no I/O: the runtime and the derivation script both import it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from typing import TypeVar

__all__ = ["lookup_model", "lookup_tdp", "model_tokens", "normalise_cpu_model", "parse_tdp_table"]

V = TypeVar("V")

_PARENS = re.compile(r"\([^)]*\)")
_TRAILER = re.compile(r"\s(?:with|w/|includes|and)\s.*$")
_CLOCK = re.compile(r"@?\s*\d+(?:\.\d+)?\s*[mg]hz\b")
_GENERATION = re.compile(r"\b\d+(?:st|nd|rd|th)\s+gen\b")
_CORES = re.compile(r"\b[a-z0-9]+-core\b")
_SUFFIXES = re.compile(
    r"\b(?:x-series|mobile\s+processor|(?:microsoft\s+surface|extreme)\s+edition)\b"
)
_CORE2 = re.compile(r"\bcore2\b")
# Nehalem-era cpuinfo says "Core(TM) i7 CPU 920" where the product page says "Core i7-920".
_CORE_I_SPACED = re.compile(r"\b(i[3579]) (\d{3,5}[a-z]*)\b")
_OTHER = re.compile(r"[^a-z0-9.+/\- ]+")
_DROP_WORDS = frozenset(
    {"cpu", "processor", "apu", "intel", "amd", "genuine", "genuineintel", "authenticamd"}
)
_VERSION = re.compile(r"v\d+")


def normalise_cpu_model(name: str) -> str:
    """The normal form of a CPU model name, shared by the bundled table and the runtime.

    Pure and idempotent (``normalise_cpu_model(normalise_cpu_model(x)) ==
    normalise_cpu_model(x)``), so normalising a table key again never changes it. Returns ""
    for a name with nothing left (``"CPU"``).
    """
    s = _normalise_once(name)
    # One pass can uncover a pattern an earlier step would have removed ("(with x" loses its
    # "(" only at the end). Passes only remove text (bar "core2" -> "core 2"), so they settle
    # within a pass or two; the bound is a guard, not a limit reached in practice.
    for _ in range(8):
        again = _normalise_once(s)
        if again == s:
            break
        s = again
    return s


def _normalise_once(name: str) -> str:
    """One pass of the steps listed in the module docstring."""
    s = name.lower().replace("®", " ").replace("™", " ")
    s = _PARENS.sub(" ", s)
    s = _TRAILER.sub(" ", f" {s} ")
    s = _CLOCK.sub(" ", s)
    s = _GENERATION.sub(" ", s)
    s = _CORES.sub(" ", s)
    s = _SUFFIXES.sub(" ", s)
    s = _CORE2.sub("core 2", s)
    s = _OTHER.sub(" ", s)
    words = [w for w in s.split() if w not in _DROP_WORDS and w.strip(".+-/")]
    return _CORE_I_SPACED.sub(r"\1-\2", " ".join(words))


def model_tokens(normalised: str) -> tuple[str, ...]:
    """Tokens compared by `lookup_tdp`: whole words, hyphenated words kept whole.

    Kept whole so Xeon ``w-3365`` never meets the bare Opteron row ``3365``.
    """
    return tuple(normalised.split())


def _is_model_number(token: str) -> bool:
    """A token that names one chip (``7763``, ``1165g7``, ``8375c``), not a family or tier.

    Needs a digit and at least three characters, so ``i7``, ``9`` (Ryzen 9) or ``v3`` alone
    never make a match; names whose only number is shorter (``ryzen z1``) match exactly only.
    """
    return len(token) >= 3 and any(c.isdigit() for c in token)


def _is_subsequence(needle: tuple[str, ...], haystack: tuple[str, ...]) -> bool:
    """Whether `needle`'s tokens appear in `haystack` in order, not necessarily adjacent."""
    it = iter(haystack)
    return all(tok in it for tok in needle)


def lookup_tdp(model_name: str, table: dict[str, float]) -> tuple[float, str] | None:
    """The TDP of a CPU, by its cpuinfo name, from a table keyed by normalised names.

    Returns ``(tdp_watts, matched_table_key)`` or None; the rules are `lookup_model`'s.
    None when nothing qualifies: a wrong TDP is worse than the configured fallback.
    """
    return lookup_model(model_name, table)


def lookup_model(model_name: str, table: Mapping[str, V]) -> tuple[V, str] | None:
    """The value a table keyed by normalised CPU names holds for a cpuinfo name.

    Returns ``(value, matched_table_key)`` or None. Order of preference:

    1. the table key equal to the normalised name;
    2. else the longest key (most tokens, then most characters, then alphabetical, so the
       answer never depends on dict order) whose tokens appear in order in the name's tokens,
       provided the key carries a model-number token (``intel xeon`` alone never matches a
       Xeon) and the name carries no version token (``v3``) that the key lacks (so
       ``xeon e5-2670`` is not taken for ``xeon e5-2670 v3``).
    """
    key = normalise_cpu_model(model_name)
    if not key:
        return None
    if key in table:
        return table[key], key
    name_tokens = model_tokens(key)
    # A key qualifies only with a model-number token, and all its tokens must be in the
    # name: so it shares one of the name's model numbers. Testing that first, as a plain
    # substring, skips almost the whole table (start-up of `serve`, `run` and `track()`).
    numbers = [t for t in name_tokens if _is_model_number(t)]
    if not numbers:
        return None
    versions = {t for t in name_tokens if _VERSION.fullmatch(t)}
    best: tuple[int, int, str] | None = None
    for candidate in table:
        if not any(n in candidate for n in numbers):
            continue
        tokens = model_tokens(candidate)
        if not any(_is_model_number(t) for t in tokens):
            continue
        if not versions.issubset(tokens) or not _is_subsequence(tokens, name_tokens):
            continue
        rank = (len(tokens), len(candidate), candidate)
        if best is None or rank[:2] > best[:2] or (rank[:2] == best[:2] and rank[2] < best[2]):
            best = rank
    if best is None:
        return None
    return table[best[2]], best[2]


def parse_tdp_table(text: str) -> dict[str, float]:
    """Read the text of ``cpu_tdp.csv`` into ``{normalised model: tdp_watts}``.

    Skips the ``#`` citation lines at the top. Kept here, with no file access, so the caller
    decides where the bundled file comes from (a checkout or an installed wheel).
    """
    rows = csv.reader(io.StringIO(
        "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))))
    header = next(rows)
    model, tdp = header.index("model"), header.index("tdp_watts")
    return {row[model]: float(row[tdp]) for row in rows}
