"""`carbonmeter report FILE`: what an emissions log says, and how the same work could emit less.

Reads carbonmeter's log (CSV or JSON Lines) and CodeCarbon's emissions.csv alike
(`summary`), prints it as text (`text`) and, with --html, writes a page with charts (`html`,
which needs matplotlib: the `report` extra).
"""

from __future__ import annotations

import sys
from pathlib import Path

from carbonmeter.report.summary import LogError, read, summarise
from carbonmeter.report.text import text


def main(file: str, *, html: str | None = None) -> int:
    path = Path(file)
    try:
        s = summarise(read(path), str(path))
    except LogError as e:
        print(f"carbonmeter report: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text(s, path.name))
    if html:
        try:
            from carbonmeter.report.html import page
        except ImportError as e:
            print(f"carbonmeter report: --html needs matplotlib ({e.name} is missing): "
                  "pip install 'carbonmeter[report]'", file=sys.stderr)
            return 1
        try:
            Path(html).write_text(page(s, path.name), encoding="utf-8")
        except OSError as e:
            print(f"carbonmeter report: cannot write {html}: {e.strerror or e}",
                  file=sys.stderr)
            return 1
        print(f"\nwrote {html}")
    return 0
