"""Which CPU generation a machine runs: from the model name, else from vendor, family and model.

The power a server draws per thread depends far more on its CPU generation (process, core
count, uncore) than on the model within it, and a guest often sees no usable model name at all
(``AMD EPYC``, ``Intel Xeon Processor (Cascadelake)``, ``Common KVM processor``). Two sources:

- the bundled ``config/cpu_generations.csv``: normalised model names (the rule of
  `carbonmeter.probes.cpu_names`) to the generation whose list names them, derived from Cloud
  Carbon Footprint's per-generation CPU lists by ``config/sources/fit_power.py``;
- the vendors' model-number schemes, for models the lists miss (``EPYC 9754``, ``Xeon Gold
  5318Y``): AMD's EPYC numbers end in the generation (7xx1 Naples ... 9xx5 Turin), Intel's
  Xeon Scalable numbers carry it in their second digit (Platinum 8180 first, 8280 second, 8380
  third, 8480 fourth, 8580 fifth; a third with an H suffix is Cooper Lake, Cascade Lake's
  sibling), and Xeon 6 P-core parts (6980P) are Granite Rapids;
- the code names in the names hypervisors and clouds give their CPU models (QEMU's ``Intel
  Xeon Processor (Cascadelake)``, ``AMD EPYC-Milan Processor``; AWS's ``Intel Xeon Ice Lake``);
- the family and model numbers in ``/proc/cpuinfo``, which a hypervisor passes through even when
  it rewrites the name: Intel's in the Intel 64 and IA-32 Architectures Software Developer's
  Manual (volume 4, the model-specific register tables list each DisplayFamily_DisplayModel)
  and the Linux kernel's ``arch/x86/include/asm/intel-family.h``; AMD's in its Processor
  Programming Reference per family (17h Zen and Zen 2, 19h Zen 3 and Zen 4, 1Ah Zen 5).

The generation keys are the names of those lists (``intel-cascadelake``, ``amd-epyc-gen4``).
Standard library only, no I/O, so the fitting script and the runtime share it.
"""

from __future__ import annotations

import csv
import io
import re

from carbonmeter.probes.cpu_names import lookup_model, normalise_cpu_model

__all__ = ["cpu_generation", "generation_from_codename", "generation_from_name",
           "generation_from_number", "generation_from_signature", "parse_generation_table"]

_EPYC = re.compile(r"\bepyc [2-9][0-9a-z]{2}([1-5])[a-z]*\b")
# A tier word, or none before a "+" suffix (Sapphire and Emerald Rapids: "Xeon 8480+").
_XEON_SCALABLE = re.compile(
    r"\b(?:platinum|gold|silver|bronze|xeon(?= \d{4}[a-z]*\+)) [3-9]([1-5])\d\d([a-z+]*)")
_XEON_6 = re.compile(r"\bxeon 6\d{3}p\b")
# Code names, as they appear with spaces, hyphens and case removed ("Ice Lake", "IceLake-Server").
_INTEL_CODENAMES = (
    ("sandybridge", "intel-sandybridge"), ("ivybridge", "intel-ivybridge"),
    ("haswell", "intel-haswell"), ("broadwell", "intel-broadwell"),
    ("cascadelake", "intel-cascadelake"), ("cooperlake", "intel-cascadelake"),
    ("icelake", "intel-icelake"), ("sapphirerapids", "intel-sapphirerapids"),
    ("emeraldrapids", "intel-emeraldrapids"), ("graniterapids", "intel-graniterapids"),
    ("coffeelake", "intel-coffeelake"),
)
_AMD_CODENAMES = (("naples", "1"), ("rome", "2"), ("milan", "3"), ("genoa", "4"),
                  ("bergamo", "4"), ("siena", "4"), ("turin", "5"))
_EPYC_NTH_GEN = re.compile(r"epyc(\d)(?:st|nd|rd|th)gen")
_SCALABLE_GENERATIONS = {"1": "intel-skylake-server", "2": "intel-cascadelake",
                         "3": "intel-icelake", "4": "intel-sapphirerapids",
                         "5": "intel-emeraldrapids"}

# Intel family 6 DisplayModel -> generation. Model 85 (0x55) is Skylake-SP, Cascade Lake and
# Cooper Lake, told apart only by stepping: it maps to Cascade Lake, the one most hosts with that
# model run today (their per-thread figures differ by a few percent). Sierra Forest (0xAF) and
# the client parts after Comet Lake have no list of their own: unknown, not a wrong guess.
_INTEL_FAMILY_6 = {
    0x2A: "intel-sandybridge", 0x2D: "intel-sandybridge",
    0x3A: "intel-ivybridge", 0x3E: "intel-ivybridge",
    0x3C: "intel-haswell", 0x3F: "intel-haswell", 0x45: "intel-haswell", 0x46: "intel-haswell",
    0x3D: "intel-broadwell", 0x47: "intel-broadwell", 0x4F: "intel-broadwell",
    0x56: "intel-broadwell",
    0x4E: "intel-skylake-client", 0x5E: "intel-skylake-client",
    0x55: "intel-cascadelake",
    0x8E: "intel-coffeelake", 0x9E: "intel-coffeelake", 0xA5: "intel-coffeelake",
    0xA6: "intel-coffeelake",
    0x6A: "intel-icelake", 0x6C: "intel-icelake", 0x7D: "intel-icelake", 0x7E: "intel-icelake",
    0x8F: "intel-sapphirerapids",
    0xCF: "intel-emeraldrapids",
    0xAD: "intel-graniterapids", 0xAE: "intel-graniterapids",
}


def _amd(family: int, model: int) -> str | None:
    """AMD's Zen generations by family and model range (the PPR of each family)."""
    if family == 0x17:  # Zen, Zen+ (Naples) below 0x30; Zen 2 (Rome) from 0x30
        return "amd-epyc-gen1" if model < 0x30 else "amd-epyc-gen2"
    if family == 0x19:  # Zen 3 (Milan 0x01, client 0x20-0x5F); Zen 4 (Genoa 0x11, Bergamo 0xA0)
        zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF
        return "amd-epyc-gen4" if zen4 else "amd-epyc-gen3"
    if family == 0x1A:  # Zen 5 (Turin 0x02, Turin dense 0x11)
        return "amd-epyc-gen5"
    return None


def generation_from_signature(family: int | None, model: int | None,
                              vendor: str = "") -> str | None:
    """The generation of a CPU from cpuinfo's ``cpu family`` and ``model`` numbers.

    `vendor` is cpuinfo's ``vendor_id`` when known; without it family 6 is taken as Intel and
    families 23, 25 and 26 as AMD (the only vendors using them for current server CPUs).
    """
    if family is None or model is None:
        return None
    vendor = vendor.lower()
    if family == 6 and "amd" not in vendor:
        return _INTEL_FAMILY_6.get(model)
    if family in (0x17, 0x19, 0x1A) and "intel" not in vendor:
        return _amd(family, model)
    return None


def generation_from_name(name: str, table: dict[str, str]) -> tuple[str, str] | None:
    """``(generation, matched key)`` for a CPU model name, by `cpu_names.lookup_model`'s rules."""
    return lookup_model(name, table) if name else None


def generation_from_number(name: str) -> str | None:
    """The generation a model number spells by its vendor's scheme (module docstring)."""
    key = normalise_cpu_model(name)
    if m := _EPYC.search(key):
        return f"amd-epyc-gen{m.group(1)}"
    if m := _XEON_SCALABLE.search(key):
        cooper_lake = m.group(1) == "3" and "h" in m.group(2)
        return "intel-cascadelake" if cooper_lake else _SCALABLE_GENERATIONS[m.group(1)]
    if _XEON_6.search(key):
        return "intel-graniterapids"
    return None


def generation_from_codename(name: str) -> str | None:
    """The generation a code name in a CPU's name gives (module docstring)."""
    compact = re.sub(r"[^a-z0-9]", "", name.lower())
    if "epyc" in compact:
        if m := _EPYC_NTH_GEN.search(compact):
            return f"amd-epyc-gen{m.group(1)}" if m.group(1) in "12345" else None
        for codename, generation in _AMD_CODENAMES:
            if codename in compact:
                return f"amd-epyc-gen{generation}"
    if "skylake" in compact:
        client = "core" in compact or "client" in compact
        return "intel-skylake-client" if client else "intel-skylake-server"
    for codename, generation in _INTEL_CODENAMES:
        if codename in compact:
            return generation
    if "graviton2" in compact or "neoversen1" in compact:
        return "amd-neoverse-n1"  # CCF's list name for Neoverse N1 parts (Graviton 2, Altra)
    return None


def cpu_generation(name: str, table: dict[str, str], *, family: int | None = None,
                   model: int | None = None, vendor: str = "") -> tuple[str | None, str]:
    """(generation, what decided it): the lists, else the model number, else a code name,
    else family and model."""
    found = generation_from_name(name, table)
    if found:
        return found[0], f"model name '{name}' (list entry '{found[1]}')"
    by_number = generation_from_number(name) if name else None
    if by_number:
        return by_number, f"model number of '{name}'"
    by_codename = generation_from_codename(name) if name else None
    if by_codename:
        return by_codename, f"code name in '{name}'"
    by_signature = generation_from_signature(family, model, vendor)
    if by_signature:
        return by_signature, f"cpu family {family}, model {model}"
    return None, "no generation known for this CPU"


def parse_generation_table(text: str) -> dict[str, str]:
    """Read the text of ``cpu_generations.csv`` into ``{normalised model: generation}``."""
    rows = csv.reader(io.StringIO(
        "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))))
    header = next(rows)
    model, generation = header.index("model"), header.index("generation")
    return {row[model]: row[generation] for row in rows}
