"""The engine never imports a UI library (streamlit, plotly, the app's ui/): read from its source."""
import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"
UI = ("streamlit", "plotly", "ui")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_engine_imports_no_ui_library():
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 50  # the whole engine was read
    found = {str(f.relative_to(ENGINE.parent)): sorted(_imports(f) & set(UI)) for f in files}
    assert {f: names for f, names in found.items() if names} == {}


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def draw():\n    from ui import report\n    import plotly.graph_objects as go\n")
    assert _imports(f) & set(UI) == {"ui", "plotly"}
