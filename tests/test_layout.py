"""The tree reads in data-path order: layers point down, no module circles, probes know only
hardware, and the README's contents list is the README's headings.

The import graph is every `import` statement of the package, read with `ast`: those at module
level, inside functions (a lazy import hides a circle as well as it hides a cost), and under
TYPE_CHECKING, which may point down only too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"carbonmeter": ROOT / "exporter", "carbonmeter.probes": ROOT / "probes"}

# Bottom to top. A module belongs to the longest prefix listed; it may import its own
# layer and the ones below.
LAYERS = (
    ("carbonmeter.probes", "carbonmeter.units", "carbonmeter.periodic", "carbonmeter.version",
     "carbonmeter.config.errors"),
    ("carbonmeter.carbon.intensity", "carbonmeter.snapshot", "carbonmeter.usage",
     "carbonmeter.attribution.view"),
    ("carbonmeter.config",),
    ("carbonmeter.carbon", "carbonmeter.accounting", "carbonmeter.guard", "carbonmeter.embodied",
     "carbonmeter.state"),
    ("carbonmeter.attribution", "carbonmeter.discovery", "carbonmeter.sampler"),
    ("carbonmeter.sinks", "carbonmeter.server", "carbonmeter.measure.meter",
     "carbonmeter.report.equivalents"),
    ("carbonmeter.measure", "carbonmeter.report", "carbonmeter.app"),
    ("carbonmeter.cli", "carbonmeter.__main__"),
)
# The package itself is the public facade: it re-exports the API lazily, from the top.
FACADE = "carbonmeter"


def modules() -> dict[str, Path]:
    out = {}
    for package, folder in FOLDERS.items():
        for f in folder.rglob("*.py"):
            parts = list(f.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = f
    return out


MODULES = modules()


def _target(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def edges() -> set[tuple[str, str, str]]:
    """(importer, imported, where): where is "module", "function" or "typing"."""
    found = set()
    for name, path in MODULES.items():
        def visit(node: ast.AST, where: str, name: str = name) -> None:
            for child in ast.iter_child_nodes(node):
                w = where
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    w = "typing"
                elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                        and where == "module":
                    w = "function"
                targets: list[str] = []
                if isinstance(child, ast.ImportFrom) and (child.module or "").startswith(
                        "carbonmeter"):
                    for alias in child.names:  # a submodule, else the module itself
                        sub = f"{child.module}.{alias.name}"
                        targets.append(sub if sub in MODULES else child.module)
                elif isinstance(child, ast.Import):
                    targets = [a.name for a in child.names if a.name.startswith("carbonmeter")]
                for t in targets:
                    resolved = _target(t)
                    if resolved and resolved != name:
                        found.add((name, resolved, w))
                visit(child, w)
        visit(ast.parse(path.read_text()), "module")
    return found


def layer(module: str) -> int:
    best = (-1, -1)
    for n, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best[1]:
                best = (n, len(p))
    assert best[0] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[0]


EDGES = edges()


def test_every_module_has_a_layer():
    for m in MODULES:
        if m != FACADE:
            layer(m)


def test_no_module_imports_one_above_its_layer():
    up = sorted(f"{a} -> {b} ({w})" for a, b, w in EDGES
                if a != FACADE and b != FACADE and layer(b) > layer(a))
    assert up == []


def test_only_the_facade_imports_the_package_itself():
    """`from carbonmeter import X` inside the package would run the facade's lazy imports."""
    assert sorted(f"{a} ({w})" for a, b, w in EDGES if b == FACADE) == []


def test_no_circles_even_through_imports_inside_functions():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for a, b, w in EDGES:
        if w != "typing":
            graph[a].add(b)
    cycles, index, low, stack, on = [], {}, {}, [], set()

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert cycles == []


def test_probes_know_hardware_and_nothing_else():
    """A probe imports the standard library, its own package and nothing of the exporter."""
    outside = sorted(f"{a} -> {b}" for a, b, _ in EDGES
                     if a.startswith("carbonmeter.probes") and not b.startswith(
                         "carbonmeter.probes"))
    assert outside == []


def test_the_checker_sees_a_circle_when_there_is_one(tmp_path, monkeypatch):
    """The walk above finds imports inside functions: a circle hidden that way is caught."""
    fake = {"carbonmeter.a": tmp_path / "a.py", "carbonmeter.b": tmp_path / "b.py"}
    fake["carbonmeter.a"].write_text("from carbonmeter.b import x\n")
    fake["carbonmeter.b"].write_text("def f():\n    from carbonmeter.a import y\n")
    import sys

    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    assert {(a, b, w) for a, b, w in edges()} == {
        ("carbonmeter.a", "carbonmeter.b", "module"),
        ("carbonmeter.b", "carbonmeter.a", "function")}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_contents_list_every_section_with_its_anchor():
    text = (ROOT / "README.md").read_text()
    body = re.sub(r"```.*?```", "", text, flags=re.S)
    headings = [h for h in re.findall(r"^#{2,3} (.+)$", body, re.M) if h != "Contents"]
    contents = body[body.index("## Contents"):body.index("\n## ", body.index("## Contents") + 1)]
    listed = re.findall(r"- \[(.+?)\]\(#([^)]+)\)", contents)
    assert [h for h, _ in listed] == headings
    assert all(anchor == _anchor(h) for h, anchor in listed)


@pytest.mark.parametrize("name", ["exporter", "probes", "config"])
def test_the_folder_names_are_not_import_names(name):
    """Nothing in the tree imports a folder by its name: they are not packages once installed."""
    for path in [*ROOT.glob("exporter/**/*.py"), *ROOT.glob("probes/**/*.py"),
                 *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/**/*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] != name, f"{path}: from {node.module}"
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != name for a in node.names), path
