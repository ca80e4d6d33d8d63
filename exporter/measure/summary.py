"""What a measured span cost, as `carbonmeter run` prints it: text for people, JSON for tools.

The JSON object (SCHEMA, documented in the README) carries the same figures as the text,
in base units: joules, grams, seconds, watts, gCO2eq/kWh.
"""

from __future__ import annotations

import shlex
from typing import Any

from carbonmeter import units
from carbonmeter.carbon.compare import Elsewhere, greenest
from carbonmeter.usage import Usage

SCHEMA = "carbonmeter.run/1"
SCOPE_NOTE = ("whole machine: every process's energy is counted, not only the command's "
              "(process attribution was not available: {reason})")


def scope_note(usage: Usage) -> str:
    """Which energy the figures are: the command's process tree, or the whole machine."""
    s = usage.share
    if s is None:
        return SCOPE_NOTE.format(reason=usage.scope_reason or "not asked for")
    part = s.energy_j / usage.energy_j * 100 if usage.energy_j > 0 else 0.0
    return (f"process tree: the command and its children spent {units.energy(s.energy_j)} "
            f"({units.sig(part)} % of the machine's), {units.mass(s.emissions_g)} CO2eq; "
            f"{s.method}")


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
        "process_tree": None if usage.share is None else {
            "energy_j": usage.share.energy_j, "emissions_g": usage.share.emissions_g,
            "energy_by_kind_j": usage.share.by_kind, "method": usage.share.method},
        "energy_j": usage.energy_j,
        "measured_energy_j": usage.measured_j,
        "estimated_energy_j": usage.estimated_j,
        "estimated_relative_error": usage.estimated_relative_error,
        "emissions_g": usage.emissions_g,
        "intensity": {"g_per_kwh": i.g_per_kwh, "region": i.region, "provider": i.provider,
                      "source": i.source, "year": i.year},
        "pue": usage.pue,
        "energy_by_kind_j": usage.energy_by_kind(),
        "devices": [{
            "id": d.id, "kind": d.kind, "source": d.source, "name": d.name,
            "estimated": d.estimated, "energy_j": d.energy_j, "emissions_g": d.emissions_g,
            "mean_power_w": d.energy_j / usage.duration_s if usage.duration_s > 0 else None,
            "relative_error": d.relative_error(usage.duration_s),
        } for d in usage.devices],
        "greenest_regions": [_where(e) for e in greenest(
            usage.energy_kwh * usage.pue, usage.emissions_g, usage.intensity)],
    })
    if usage.error:
        out["error"] = usage.error
    return out


def as_text(usage: Usage, *, command: list[str] | None = None,
            exit_code: int | None = None) -> str:
    i = usage.intensity
    lines = []
    if command is not None:
        shown = shlex.join(command)
        shown = shown if len(shown) <= 100 else shown[:97] + "..."
        lines.append(f"carbonmeter: {shown} exited with {exit_code}")
    lines.append(f"  wall time   {units.duration(usage.duration_s)}")
    rows = [(f"{d.id} ({d.kind}, {d.source}, {'estimated' if d.estimated else 'measured'})",
             units.energy(d.energy_j),
             (f"{units.sig(d.energy_j / usage.duration_s)} W" if usage.duration_s > 0 else "")
             + (f"  {units.plus_minus(d.relative_error(usage.duration_s))}"
                if d.device.error is not None else ""))
            for d in usage.devices]
    width = max([len(r[0]) for r in rows] + [5])
    lines.append("  energy")
    for name, energy, watts in rows:
        lines.append(f"    {name:<{width}}  {energy:>10}  {watts}")
    bar = units.plus_minus(usage.estimated_relative_error)
    split = (f"{units.energy(usage.measured_j)} measured, "
             f"{units.energy(usage.estimated_j)} estimated" + (f" {bar}" if bar else ""))
    lines.append(f"    {'total':<{width}}  {units.energy(usage.energy_j):>10}  ({split})")
    year = f", {i.year}" if i.year else ""
    lines.append(f"  CO2eq       {units.mass(usage.emissions_g)} at {i.g_per_kwh:g} gCO2eq/kWh "
                 f"({i.region}: {i.source}{year}), PUE {usage.pue:g}")
    lines.append(f"  scope       {scope_note(usage)}")
    others = greenest(usage.energy_kwh * usage.pue, usage.emissions_g, i)
    if others:
        lines.append("  the same energy would have emitted least in:")
        for e in others:
            saving = (f"{units.mass(e.saving_g)} less" if e.saving_g >= 0
                      else f"{units.mass(-e.saving_g)} more")
            lines.append(f"    {e.region.code:<4} {e.region.name:<24} "
                         f"{e.region.g_per_kwh:>6g} g/kWh  {units.mass(e.grams):>9}  ({saving})")
    return "\n".join(lines) + "\n"
