"""The engine's layers, read from its source: imports only go down (engine.LAYERS), no module
imports itself back through another, and nothing in the engine imports a UI library
(streamlit, plotly, the app's ui/, the figures' charts/). The figures (charts/) import neither
Streamlit nor torch. Every import counts, those inside functions too."""
import ast
from pathlib import Path

import pytest

import engine

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
UI = ("streamlit", "plotly", "ui", "charts")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The modules `path` imports: `from a.b import c` is a.b.c where that is a module, else a.b."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return out


def graph(package: Path = ENGINE) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports, and the UI libraries."""
    files, root = sorted(package.rglob("*.py")), package.parent
    known = {module_name(f, root) for f in files}
    return {module_name(f, root): {m for m in imports(f, known, root) if m in known or m.split(".")[0] in UI}
            for f in files}


def rank(module: str) -> int:
    """A module's layer: the index in engine.LAYERS of its top-level package or module."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return next(i for i, layer in enumerate(engine.LAYERS) if top in layer[0].split())


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in g.get(v, ()):
                out.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in g.items() for b in deps
                  if b.startswith("engine") and rank(b) > rank(a))


def test_every_module_of_the_engine_has_a_layer():
    g = graph()
    assert len(g) > 60  # the whole engine was read
    assert {m: rank(m) for m in g}  # rank() finds each (StopIteration otherwise)
    top = [m for m in g if m.count(".") == 1 and not (ENGINE / m.split(".")[1]).is_dir()]
    assert len(top) <= 10, top  # the engine's top level: a few modules besides its packages


def test_imports_only_go_down_and_never_round_in_a_cycle():
    g = graph()
    assert upward(g) == []
    assert cycles(g) == []


def test_the_engine_imports_no_ui_library():
    found = {a: sorted(b for b in deps if b.split(".")[0] in UI) for a, deps in graph().items()}
    assert {a: names for a, names in found.items() if names} == {}


def test_the_figures_import_neither_streamlit_nor_torch():
    found = set()
    for f in sorted((ROOT / "charts").rglob("*.py")):
        found |= {m.split(".")[0] for m in imports(f, set(), ROOT)}
    assert "plotly" in found and "engine" in found  # the whole package was read
    assert found & {"streamlit", "torch", "ui"} == set()


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A tiny package laid out as the engine is: `engine/` with two layers."""
    pkg = tmp_path / "engine"
    for rel, text in {"__init__.py": "", "formats/__init__.py": "", "formats/grid.py": "import torch\n",
                      "methods/__init__.py": "", "methods/gptq.py": "from engine.formats.grid import x\n"}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    monkeypatch.setattr(engine, "LAYERS", (("formats", ""), ("methods", ""), ("__init__", "")))
    return pkg


def test_the_checks_see_an_upward_import_a_cycle_and_an_import_inside_a_function(toy):
    assert graph(toy)["engine.methods.gptq"] == {"engine.formats.grid"}
    assert upward(graph(toy)) == [] and cycles(graph(toy)) == []
    (toy / "formats" / "grid.py").write_text("def f():\n    from engine.methods import gptq\n    import plotly\n")
    g = graph(toy)
    assert upward(g) == ["engine.formats.grid -> engine.methods.gptq"]
    assert cycles(g) == [["engine.formats.grid", "engine.methods.gptq"]]
    assert "plotly" in g["engine.formats.grid"]
