"""`carbonmeter report --html`: one self-contained page, charts drawn by matplotlib.

Each chart is matplotlib's SVG, inlined: text is drawn as paths (no font to fetch), the
page has no script, no stylesheet link and no image URL, so it opens offline and in a
mail client the same. matplotlib is imported here only (the `report` extra).
"""

from __future__ import annotations

import html
import io
import re
from datetime import datetime

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from carbonmeter import units
from carbonmeter.report.equivalents import describe
from carbonmeter.report.summary import (
    Summary,
    device_error,
    intensity_lines,
    measured_note,
    scope,
    show_kwh,
)

# The measured colour means measured and nothing else: estimates, energy a log does not
# describe and other regions' bars are drawn in other colours.
MEASURED, ESTIMATED, ACCENT, OTHER = "#2b6f8f", "#c7a44a", "#3a8f4b", "#9aa5ab"


def _svg(fig: Figure, label: str) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE
    return svg.replace("<svg ", f'<svg role="img" aria-label="{html.escape(label)}" '
                       f'class="chart" ', 1)


def _energy_unit(kwh_values: list[float]) -> tuple[str, float]:
    top = max(kwh_values, default=0.0)
    if top >= 1:
        return "kWh", 1.0
    if top >= 1e-3:
        return "Wh", 1e3
    return "J", 3.6e6


def power_chart(s: Summary) -> str:
    """Mean power of each device per row (interval or run) against the row's end time."""
    fig = Figure(figsize=(8, 3.2))
    ax = fig.add_subplot()
    series: dict[str, tuple[list[datetime], list[float]]] = {}
    for r in sorted(s.rows, key=lambda r: r.end):
        if r.duration_s <= 0:
            continue
        devices = r.devices or {"host": {"energy": r.energy_kwh}}
        for dev, d in devices.items():
            if not isinstance(d, dict):
                continue
            xs, ys = series.setdefault(dev, ([], []))
            xs.append(r.end)
            ys.append(float(d.get("energy") or 0) * 3.6e6 / r.duration_s)
    for dev, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 50 else None, markersize=3, linewidth=1.2,
                label=dev)
    ax.set_ylabel("power (W)")
    ax.set_xlabel("end of each row (UTC)")
    ax.set_title("Power over time, per device")
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="best")
    return _svg(fig, "power over time per device")


def energy_chart(s: Summary) -> str:
    """Energy of each device (or device kind, for logs without devices), measured or not."""
    if s.by_device:
        items = [(dev, d["energy_kwh"], d["estimated"]) for dev, d in s.by_device.items()]
        title = "Energy by device (blue: measured, ochre: estimated)"
    else:  # the log does not say what was measured: nothing is drawn as measured
        items = [(k, v, True) for k, v in s.by_kind.items()] or [("host", s.energy_kwh, True)]
        title = "Energy by device kind (ochre: estimated; the log does not say what was measured)"
    unit, scale = _energy_unit([v for _, v, _ in items])
    fig = Figure(figsize=(8, 0.5 + 0.45 * len(items)))
    ax = fig.add_subplot()
    names = [n for n, _, _ in items]
    ax.barh(names, [v * scale for _, v, _ in items],
            color=[ESTIMATED if est else MEASURED for _, _, est in items])
    ax.invert_yaxis()
    ax.set_xlabel(f"energy ({unit})")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, "energy by device")


def regions_chart(s: Summary) -> str:
    """The same energy's CO2eq on each grid of the comparison; the grid in use highlighted."""
    places = s.places
    grams = [e.grams for e in places]
    top = max(grams, default=0.0)
    unit, scale = ("kg", 1e-3) if top >= 1000 else ("g", 1.0) if top >= 1 else ("mg", 1e3)
    fig = Figure(figsize=(8, 0.6 + 0.4 * len(places)))
    ax = fig.add_subplot()
    labels = [f"{e.region.name} ({e.role})" if e.role else e.region.name for e in places]
    ax.barh(labels, [g * scale for g in grams],
            color=[ACCENT if e.role in ("configured", "as run") else OTHER for e in places])
    ax.invert_yaxis()
    ax.set_xlabel(f"CO2eq ({unit}) for the same energy")
    ax.set_title("Emissions by region")
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig, "emissions by region")


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;
color:#1d2a30}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{padding:.2rem .8rem;text-align:left;
border-bottom:1px solid #dde}td:nth-child(n+2){font-variant-numeric:tabular-nums}
.chart{display:block;max-width:100%;height:auto;margin:1rem 0}.note{color:#566}
"""


def _bar(error: float | None) -> str:
    return f"{units.plus_minus(error)} " if error else ""


def page(s: Summary, name: str) -> str:
    facts = [
        ["period", f"{s.first:%Y-%m-%d %H:%M:%S} to {s.last:%Y-%m-%d %H:%M:%S %Z}"],
        ["rows", f"{len(s.rows)} in {s.runs} run(s), {len(s.tasks)} task row(s)"],
        ["measured for", units.duration(s.duration_s)],
        ["energy", f"{show_kwh(s.energy_kwh)} {_bar(s.energy_relative_error)}(with PUE: "
                   f"{show_kwh(s.facility_kwh)})"],
        ["CO2eq", f"{units.mass(s.emissions_g)} {_bar(s.energy_relative_error)}".strip()],
        ["measured", measured_note(s)],
        ["intensity", intensity_lines(s)[0]],
        *(["", line] for line in intensity_lines(s)[1:]),
    ]
    kinds = [[k, show_kwh(v)] for k, v in s.by_kind.items()]
    devices = [[dev, d["kind"], d["source"], "estimated" if d["estimated"] else "measured",
                show_kwh(d["energy_kwh"]), units.plus_minus(device_error(d))]
               for dev, d in s.by_device.items()]
    places = [[e.role, e.region.code, e.region.name, f"{e.region.g_per_kwh:g}",
               units.mass(e.grams),
               "" if e.role in ("configured", "as run") else units.mass(e.saving_g)]
              for e in s.places]
    equiv = [[*describe(f, n), f.source] for f, n in s.equivalents]
    over = [[f"{t:%Y-%m-%d %H:%M}", show_kwh(e), units.mass(g)] for t, e, g in s.over_time]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>carbonmeter report: {html.escape(name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>carbonmeter report: {html.escape(name)}</h1>",
        _table(["", ""], facts),
        f'<p class="note">{html.escape(scope(s).capitalize())}.</p>',
        "<h2>Power over time</h2>", power_chart(s),
        "<h2>Energy by device</h2>", energy_chart(s),
        _table(["kind", "energy"], kinds) if kinds else "",
        _table(["device", "kind", "source", "how", "energy", "error bar"], devices)
        if devices else "",
        "<h2>The same energy elsewhere</h2>", regions_chart(s),
        _table(["", "code", "region", "gCO2eq/kWh", "CO2eq", "saving"], places),
        "<h2>Equivalents</h2>", _table(["how many", "of what", "source"], equiv),
        f"<h2>Over time, per {html.escape(s.bucket)} (UTC)</h2>",
        _table(["from", "energy", "CO2eq"], over),
        "</body></html>",
    ]
    out = "\n".join(parts)
    # matplotlib names clip paths and glyphs with ids; the same glyph in two charts has the
    # same definition, but keep ids unique on the page anyway, per chart.
    return _unique_ids(out)


def _unique_ids(doc: str) -> str:
    n = 0

    def per_chart(m: re.Match[str]) -> str:
        nonlocal n
        n += 1
        svg = m.group(0)
        svg = re.sub(r'id="([^"]+)"', rf'id="c{n}-\1"', svg)
        return re.sub(r'(href="#|url\(#)([^")]+)', rf"\1c{n}-\2", svg)

    return re.sub(r"<svg .*?</svg>", per_chart, doc, flags=re.S)
