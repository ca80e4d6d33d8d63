"""The report as plain text: what the HTML page says, without the charts."""

from __future__ import annotations

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


def _bar(error: float | None) -> str:
    """ ± N % after an estimated figure; nothing after a measured one."""
    return f"  {units.plus_minus(error)}" if error else ""


def text(s: Summary, name: str) -> str:
    out = [f"carbonmeter report: {name}",
           f"  period        {s.first:%Y-%m-%d %H:%M:%S} to {s.last:%Y-%m-%d %H:%M:%S %Z}",
           f"  rows          {len(s.rows)} in {s.runs} run(s), {len(s.tasks)} task row(s)",
           f"  measured for  {units.duration(s.duration_s)}",
           f"  energy        {show_kwh(s.energy_kwh)}{_bar(s.energy_relative_error)} "
           f"(with PUE: {show_kwh(s.facility_kwh)})",
           f"  CO2eq         {units.mass(s.emissions_g)}{_bar(s.energy_relative_error)}",
           f"  measured      {measured_note(s)}"]
    first, *grids = intensity_lines(s)
    out.append(f"  intensity     {first}")
    out.extend(f"    {line}" for line in grids)
    if s.by_kind:
        out.append("\nby device kind")
        for k, value in s.by_kind.items():
            out.append(f"  {k:<10} {show_kwh(value):>12}  {100 * value / s.energy_kwh:5.1f} %"
                       if s.energy_kwh else f"  {k:<10} {show_kwh(value):>12}")
    if s.by_device:
        out.append("\nby device" + (" (the whole machine, while the commands ran)"
                                     if s.process_rows else ""))
        for dev, d in s.by_device.items():
            how = "estimated" if d["estimated"] else "measured"
            out.append(f"  {dev:<14} {d['kind']:<9} {d['source']:<14} {how:<10} "
                       f"{show_kwh(d['energy_kwh']):>12}{_bar(device_error(d))}")
    out.append(f"\nover time, per {s.bucket} (UTC)")
    for t, e, g in s.over_time:
        out.append(f"  {t:%Y-%m-%d %H:%M}  {show_kwh(e):>12}  {units.mass(g):>10}")
    out.append("\nthe same energy elsewhere")
    for e in s.places:
        r = e.region
        label = e.role or ""
        saving = "" if e.role in ("configured", "as run") else (
            f"  saves {units.mass(e.saving_g)}" if e.saving_g >= 0
            else f"  adds {units.mass(-e.saving_g)}")
        out.append(f"  {label:<10} {r.code:<6} {r.name:<28} {r.g_per_kwh:>7g} g/kWh "
                   f"{units.mass(e.grams):>10}{saving}")
    out.append("\nequivalents")
    for f, n in s.equivalents:
        many, what = describe(f, n)
        out.append(f"  {many} {what}  [{f.source}]")
    if s.tasks:
        out.append("\ntasks (inside the runs above)")
        agg: dict[str, list[float]] = {}
        for t in s.tasks:
            a = agg.setdefault(t.task, [0, 0.0, 0.0])
            a[0] += 1
            a[1] += t.energy_kwh
            a[2] += t.emissions_g
        for name_, (n, e, g) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:20]:
            out.append(f"  {name_:<30} x{int(n):<4} {show_kwh(e):>12}  {units.mass(g):>10}")
    out.append("\nscope: " + scope(s))
    return "\n".join(out) + "\n"

