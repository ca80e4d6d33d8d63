"""What a measured span cost, as `carbonmeter run` prints it: text for people, JSON for tools.

The headline is the command's own figure, as `time` gives the command's own time: its
process tree's share of the machine's energy, with the whole machine's beside it; where the
tree could not be measured, the machine's, and it says so. The JSON object (SCHEMA,
documented in the README) carries the same figures as the text, in base units: joules, grams,
seconds, watts, gCO2eq/kWh.
"""

from __future__ import annotations

import shlex
from typing import Any

from carbonmeter import units
from carbonmeter.carbon.compare import Elsewhere, greenest
from carbonmeter.usage import Usage

SCHEMA = "carbonmeter.run/2"


def scope_note(usage: Usage) -> str:
    """Whose energy the headline is: the command's process tree, or the whole machine."""
    s = usage.share
    if s is None:
        reason = usage.scope_reason or "not asked for"
        return (f"the whole machine's: every process's energy is counted, not only the "
                f"command's (its process tree could not be measured: {reason})")
    part = s.energy_j / usage.energy_j * 100 if usage.energy_j > 0 else 0.0
    return f"its process tree: {units.sig(part)} % of the machine's energy; {s.method}"


def measured_note(usage: Usage) -> str:
    """How much of the machine's energy sensors measured; said plainly when none did."""
    counted = usage.counted
    if counted and all(d.estimated for d in counted):
        return "0 % measured: every figure is an estimate"
    if not any(d.estimated for d in counted):
        return "100 % measured"
    share = usage.measured_j / usage.energy_j * 100 if usage.energy_j > 0 else 0.0
    return (f"{units.sig(share)} % measured, {units.sig(100 - share)} % estimated "
            f"({', '.join(sorted({d.source for d in counted if d.estimated}))})")


def _greenest(usage: Usage) -> list[Elsewhere]:
    """Where the command's energy (the headline) would have emitted least."""
    return greenest(usage.own_energy_j / 3.6e6 * usage.pue, usage.own_emissions_g,
                    usage.intensity)


def _where(e: Elsewhere) -> dict[str, Any]:
    r = e.region
    return {"code": r.code, "name": r.name, "kind": r.kind, "provider": r.provider,
            "g_per_kwh": r.g_per_kwh, "year": r.year, "emissions_g": e.grams,
            "saving_g": e.saving_g}


def as_json(usage: Usage, *, command: list[str] | None = None,
            exit_code: int | None = None) -> dict[str, Any]:
    i = usage.intensity
    out: dict[str, Any] = {"schema": SCHEMA}
    if command is not None:
        out["command"] = command
        out["exit_code"] = exit_code
    out.update({
        "wall_time_s": usage.duration_s,
        "scope": usage.scope,
        "scope_note": scope_note(usage),
        # the headline: the command's process tree, or the machine where it was not measured
        "energy_j": usage.own_energy_j,
        "emissions_g": usage.own_emissions_g,
        "energy_by_kind_j": usage.own_energy_by_kind(),
        "method": usage.share.method if usage.share is not None else None,
        "machine": {
            "energy_j": usage.energy_j, "emissions_g": usage.emissions_g,
            "measured_energy_j": usage.measured_j, "estimated_energy_j": usage.estimated_j,
            "estimated_relative_error": usage.estimated_relative_error,
            "measured_note": measured_note(usage), "energy_by_kind_j": usage.energy_by_kind(),
        },
        "intensity": {"g_per_kwh": i.g_per_kwh, "region": i.region, "provider": i.provider,
                      "source": i.source, "year": i.year},
        "pue": usage.pue,
        "devices": [{
            "id": d.id, "kind": d.kind, "source": d.source, "name": d.name,
            "estimated": d.estimated, "energy_j": d.energy_j, "emissions_g": d.emissions_g,
            "mean_power_w": d.energy_j / usage.duration_s if usage.duration_s > 0 else None,
            "relative_error": d.relative_error(usage.duration_s),
        } for d in usage.devices],
        "greenest_regions": [_where(e) for e in _greenest(usage)],
    })
    if usage.error:
        out["error"] = usage.error
    return out


def as_text(usage: Usage, *, command: list[str] | None = None,
            exit_code: int | None = None) -> str:
    i = usage.intensity
    lines = []
    if command is not None:
        # one line, whatever the arguments hold (a script passed with -c has newlines)
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shlex.join(command))
        shown = shown if len(shown) <= 100 else shown[:97] + "..."
        lines.append(f"carbonmeter: {shown} exited with {exit_code}")
    lines.append(f"  wall time   {units.duration(usage.duration_s)}")
    figures = [(units.energy(usage.own_energy_j), units.mass(usage.own_emissions_g))]
    if usage.share is not None:
        figures.append((units.energy(usage.energy_j), units.mass(usage.emissions_g)))
    ew = max(len(e) for e, _ in figures)
    gw = max(len(g) for _, g in figures)
    (e, g), rest = figures[0], figures[1:]
    what = scope_note(usage)
    if usage.share is not None:
        what = what.split(";")[0]  # the method has a line of its own
    lines.append(f"  command     {e:>{ew}}  {g:>{gw}} CO2eq  {what}")
    for e, g in rest:
        lines.append(f"  machine     {e:>{ew}}  {g:>{gw}} CO2eq  every process, while it ran")
    lines.append(f"  measured    {measured_note(usage)}")
    year = f", {i.year}" if i.year else ""
    lines.append(f"  intensity   {i.g_per_kwh:g} gCO2eq/kWh ({i.region}: {i.source}{year}), "
                 f"PUE {usage.pue:g}")
    if usage.share is not None:
        lines.append(f"  share       {usage.share.method}")
    rows = [(f"{d.id} ({d.kind}, {d.source}, {'estimated' if d.estimated else 'measured'})",
             units.energy(d.energy_j),
             (f"{units.sig(d.energy_j / usage.duration_s)} W" if usage.duration_s > 0 else "")
             + (f"  {units.plus_minus(d.relative_error(usage.duration_s))}"
                if d.device.error is not None else ""))
            for d in usage.devices]
    width = max([len(r[0]) for r in rows] + [5])
    lines.append("  the machine's energy, by device")
    for name, energy, watts in rows:
        lines.append(f"    {name:<{width}}  {energy:>10}  {watts}")
    bar = units.plus_minus(usage.estimated_relative_error)
    split = (f"{units.energy(usage.measured_j)} measured, "
             f"{units.energy(usage.estimated_j)} estimated" + (f" {bar}" if bar else ""))
    lines.append(f"    {'total':<{width}}  {units.energy(usage.energy_j):>10}  ({split})")
    others = _greenest(usage)
    if others:
        whose = "the command's" if usage.share is not None else "the same"
        lines.append(f"  {whose} energy would have emitted least in:")
        for e in others:
            saving = (f"{units.mass(e.saving_g)} less" if e.saving_g >= 0
                      else f"{units.mass(-e.saving_g)} more")
            lines.append(f"    {e.region.code:<4} {e.region.name:<24} "
                         f"{e.region.g_per_kwh:>6g} g/kWh  {units.mass(e.grams):>9}  ({saving})")
    return "\n".join(lines) + "\n"
