"""The architecture, checked from the source: layers, no import circle, a lean runtime.

Every `import` and `from ... import` in scada_tcn/ (at module level or inside a function, since both load the
module) is read with `ast`. Layers, bottom up: runtime -> trainer -> export -> demo; a layer imports only its own
package and the ones below it (`extras` is the stdlib-only guard of the console scripts). The import graph has no
cycle, counting the package `__init__` that Python runs before a submodule imported from outside that package.
The runtime imports only the standard library and its declared dependencies, and importing all of it loads no
torch, pandas, pyarrow or omegaconf.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "scada_tcn"
LAYERS = {  # package -> the packages of ours it may import
    "runtime": {"runtime"},
    "extras": set(),
    "trainer": {"runtime", "trainer", "extras"},
    "export": {"runtime", "trainer", "export", "extras"},
    "demo": {"runtime", "trainer", "export", "demo", "extras"},
}
RUNTIME_THIRD_PARTY = {"numpy", "onnxruntime", "paho", "yaml", "prometheus_client", "orjson"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """Every module `path` imports (ours as module names; others as their top-level name)."""
    name = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods}
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for target in _imports(path, mods):
            if target not in mods:
                continue
            deps.add(target)
            parts = target.split(".")
            for i in range(2, len(parts)):  # the parent packages Python initialises first
                parent = ".".join(parts[:i])
                if parent in mods and not name.startswith(parent + ".") and name != parent:
                    deps.add(parent)
        graph[name] = deps - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycle_anywhere():
    graph = _graph()
    assert len(graph) > 60 and graph["scada_tcn.runtime.engine"], "the graph should see every module and its imports"
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(g) == [["a", "b", "c"]]


def test_each_layer_imports_only_the_layers_below_it():
    bad = []
    for name, deps in _graph().items():
        if name == "scada_tcn":
            assert deps == set(), "the package root imports nothing"
            continue
        layer = name.split(".")[1]
        for d in deps:
            if d.split(".")[1] not in LAYERS[layer] and d != "scada_tcn":
                bad.append(f"{name} -> {d}")
    assert bad == []


def test_runtime_imports_only_the_stdlib_and_its_dependencies():
    mods = _modules()
    allowed = set(sys.stdlib_module_names) | RUNTIME_THIRD_PARTY | {"__future__"}
    bad = []
    for name, path in mods.items():
        if not name.startswith("scada_tcn.runtime"):
            continue
        for target in _imports(path, mods):
            top = target.split(".")[0]
            if top == "scada_tcn":
                if not (target.startswith("scada_tcn.runtime") or target == "scada_tcn"):
                    bad.append(f"{name} -> {target}")
            elif top not in allowed:
                bad.append(f"{name} -> {target}")
    assert bad == []


def test_importing_the_runtime_loads_no_heavy_package():
    modules = sorted(n for n in _modules() if n.startswith("scada_tcn.runtime"))
    assert "scada_tcn.runtime.pipeline" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'pandas', 'pyarrow', 'omegaconf', 'scipy', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"runtime imported heavy packages: {out.stdout}"
