"""The parts of the documentation generated from the code (docs/hooks.py fills the markers with
them; its docstring lists the markers): each block generator takes the heading level its
headings start at and returns markdown, each inline generator its argument and returns a figure."""
from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path

from cli_reference import cli_reference
from page_text import ROOT, MarkerError, cell, code, first_sentence, table  # noqa: F401 (MarkerError: the hook's)


# ---------------------------------------------------------------- block generators

def methods_table(level: int = 2) -> str:
    from engine.formats import FORMATS
    from engine.methods import METHODS

    def formats(m) -> str:
        if set(m.formats) == set(FORMATS):
            return "every format"
        return ", ".join(m.formats)

    rows = [[code(m.name), m.kind, m.label, m.help, "yes" if m.calibrated else "no", formats(m)]
            for m in METHODS.values()]
    return table(["Method", "Kind", "Label", "What it does", "Calibrated", "Runs on"], rows)


def formats_table(level: int = 2) -> str:
    from engine.formats import FORMATS

    def value(v, recipe: str = "the recipe's") -> str:
        return recipe if v is None else f"{v:g}" if isinstance(v, float) else str(v)

    rows = [[code(f.name), f.family, value(f.bits), value(f.block, "a scale per row" if f.family == "float"
                                                            else "the recipe's groups"),
             value(f.bits_per_value), f.help] for f in FORMATS.values()]
    return table(["Format", "Family", "Bits", "Block", "Bits per value", "What it is"], rows)


def kinds_table(level: int = 2) -> str:
    from engine.layers import KINDS

    rows = [[code(role), f"`{type(k).__module__}.{type(k).__name__}`", first_sentence(type(k).__doc__)]
            for role, k in KINDS.items()]
    return table(["Role", "Kind", "What it is"], rows)


def module_doc(path: Path) -> str:
    """The first sentence of a module's docstring, read from its source (nothing is imported)."""
    return first_sentence(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))))


def layers(level: int = 3) -> str:
    import engine

    engine_dir = ROOT / "engine"
    out = []
    for number, (names, what) in enumerate(engine.LAYERS, 1):
        rows = []
        for name in names.split():
            path = engine_dir / name
            files = sorted(path.rglob("*.py")) if path.is_dir() else [engine_dir / f"{name}.py"]
            for f in files:
                if not f.is_file():
                    raise MarkerError(f"layers: engine.LAYERS names {name!r}, which is no module of engine/")
                shown = f.relative_to(path if path.is_dir() else engine_dir).as_posix()
                rows.append([f"`{shown}`", module_doc(f) or "—"])
        title = ", ".join(code(n) for n in names.split())
        anchor = "layer-" + names.split()[0].strip("_")
        where = f"`engine/{names}/`" if (engine_dir / names).is_dir() else "`engine/`"
        out += [f"{'#' * level} {number}. {title} {{ #{anchor} }}", "", what[:1].upper() + what[1:] + ".", "",
                table([f"Module, in {where}", "What it holds"], rows)]
    return "\n".join(out)


GLOSSARY_TABLES = ("CONCEPTS", "FORMAT_NOTES", "HIGHER_IS_BETTER", "METRIC_NAMES", "FORMULAS")

LATEX = [  # LaTeX of engine.glossary.FORMULAS -> plain text, in this order
    (r"\begin{aligned}", ""), (r"\end{aligned}", ""), (r"\textstyle", ""), (r"\displaystyle", ""),
    (r"\Big", ""), (r"\big", ""), (r"\left", ""), (r"\right", ""),
    (r"\arg\min", "argmin"), (r"\arg\max", "argmax"), (r"\max", "max"), (r"\min", "min"), (r"\log", "log"),
    (r"\lfloor", "⌊"), (r"\rfloor", "⌋"), (r"\lceil", "⌈"), (r"\rceil", "⌉"),
    (r"\ldots", "…"), (r"\cdots", "⋯"), (r"\cdot", "·"), (r"\times", "×"), (r"\approx", "≈"),
    (r"\le", "≤"), (r"\ge", "≥"), (r"\ne", "≠"), (r"\sum", "Σ"), (r"\top", "ᵀ"), (r"\|", "‖"),
    (r"\Sigma", "Σ"), (r"\sigma", "σ"), (r"\tau", "τ"), (r"\delta", "δ"), (r"\ell", "ℓ"), (r"\lambda", "λ"),
    (r"\quad", "   "), (r"\,", " "), (r"\ ", " "),
]


def plain_formula(latex: str) -> str:
    """A formula of engine.glossary.FORMULAS as plain text, one step a line; the LaTeX as it is
    where it holds a command this does not know."""
    text = latex.replace("\\\\", "\n")
    text = re.sub(r"\\(?:mathrm|text|operatorname)\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\\hat\s*\{?(\w)\}?", "\\1\u0302", text)
    text = re.sub(r"\\bar\s*\{?(\w)\}?", "\\1\u0304", text)
    for _ in range(5):  # sub- and superscripts, innermost first: x_{ij} -> x_ij, 2^{b-1} -> 2^(b-1)
        text = re.sub(r"([_^])\{([^{}]*)\}", lambda m: m.group(1) + _group(m.group(2), tight=True), text)
    for _ in range(5):  # \frac{a}{b} -> a / b
        text = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", lambda m: f"{_group(m.group(1))} / {_group(m.group(2))}", text)
    for tex, plain in LATEX:
        text = re.sub(re.escape(tex) + (r"(?![A-Za-z])" if tex[-1].isalpha() else ""), lambda _: plain, text)
    text = text.replace("&", "")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    text = "\n".join(line for line in lines if line)
    return latex.strip() if "\\" in text or "{" in text or "}" in text else text


def _group(text: str, tight: bool = False) -> str:
    text = text.strip()
    simple = re.fullmatch(r"[\w.‖|⌊⌋⌈⌉]+" if tight else r"[\w.^_]+", text)
    return text if simple else f"({text})"


def glossary(level: int = 2) -> str:
    from engine import glossary as g

    tables = [n for n, v in vars(g).items() if n.isupper() and isinstance(v, dict)]
    missing = [n for n in tables if n not in GLOSSARY_TABLES]
    if missing:
        raise MarkerError(f"glossary: engine.glossary.{', '.join(missing)} is not in the documentation: "
                          "add it to docs/hooks.py (GLOSSARY_TABLES, glossary)")
    h, h2 = "#" * level, "#" * min(level + 1, 6)
    out = [f"{h} Concepts", ""]
    for key, text in g.CONCEPTS.items():
        out += [f"`{key}` {{ #{key.replace('_', '-')} }}", f":   {text}", ""]
    out += [f"{h} Float formats", ""]
    for key, text in g.FORMAT_NOTES.items():
        out += [f"`{key}` {{ #{key.replace('_', '-')} }}", f":   {text}", ""]
    names = getattr(g, "METRIC_NAMES", {})
    metrics = [*g.HIGHER_IS_BETTER, *(m for m in names if m not in g.HIGHER_IS_BETTER)]
    better = {True: "higher", False: "lower", None: ""}
    out += [f"{h} Metrics", "", "Each metric's key (in JSON, CSV and the results), its name in the app and the "
            "reports, and which way is better.", "",
            table(["Metric", "Name", "Better"],
                  [[f"[`{m}`](#{m.replace('_', '-')})" if m in g.CONCEPTS else code(m), names.get(m, ""),
                    better[g.HIGHER_IS_BETTER.get(m)]] for m in metrics])]
    out += [f"{h} Formulas", "", "The steps of each transform, as the *Inside a layer* page shows them "
            "(one step a line).", ""]
    for key, latex in g.FORMULAS.items():
        out += [f"{h2} `{key}` {{ #formula-{key.replace('_', '-')} }}", "", "```text", plain_formula(latex), "```", ""]
    return "\n".join(out)


def bytes_rules(level: int = 2) -> str:
    source = (ROOT / "engine" / "formats" / "bytes.py").read_text(encoding="utf-8")
    return docstring_markdown(ast.get_docstring(ast.parse(source)))


def docstring_markdown(doc: str) -> str:
    """A docstring as markdown: a list that follows a line of text directly gets the blank line
    markdown needs before it."""
    out = []
    for line in doc.split("\n"):
        if line.startswith(("- ", "* ")) and out and out[-1].strip() and not out[-1].startswith(("- ", "* ", " ")):
            out.append("")
        out.append(line)
    return "\n".join(out) + "\n"


def presets_table(level: int = 2) -> str:
    from engine.formats import FORMATS
    from engine.recipe.presets import PRESETS

    rows = [[f"`{name}` ({name.upper()})", code(t), f"{FORMATS[t].bits_per_value:g}", FORMATS[t].help]
            for name, t in PRESETS.items()]
    return table(["Preset (llama-quantize)", "Default type", "Bits per value", "What the default type is"], rows)


GENERATORS = {"cli-reference": cli_reference, "methods-table": methods_table, "formats-table": formats_table,
              "kinds-table": kinds_table, "layers": layers, "glossary": glossary, "bytes-rules": bytes_rules,
              "presets-table": presets_table}


# ---------------------------------------------------------------- inline generators

def bpv(arg: str, where: str) -> str:
    from engine.formats import FORMATS

    if arg not in FORMATS:
        raise MarkerError(f"{where}: bpv:{arg}: no such format (FORMATS: {', '.join(FORMATS)})")
    value = FORMATS[arg].bits_per_value
    if value is None:
        raise MarkerError(f"{where}: bpv:{arg}: its bits per value depend on the recipe")
    return f"{value:g}"


@functools.cache
def skeleton(model: str):
    """A model built from its config alone, on the meta device (no weights, no network)."""
    from engine.drivers import footprint

    if model not in footprint.shipped() and model != "minilm":
        raise MarkerError(f"{model!r}: not a shipped config (assets/configs: {', '.join(footprint.shipped())}) "
                          "nor minilm; the docs read no model from the network")
    return footprint.open_skeleton(model)


def params(arg: str, where: str) -> str:
    try:
        return f"{skeleton(arg).total_params:,}"
    except MarkerError as e:
        raise MarkerError(f"{where}: params:{e}") from None


def model_bytes(arg: str, where: str) -> str:
    from engine.drivers import footprint
    from engine.recipe.recipe import Recipe

    model, _, spec = arg.partition(":")
    try:
        sk = skeleton(model)
    except MarkerError as e:
        raise MarkerError(f"{where}: bytes:{e}") from None
    if not spec:
        return f"{2 * sk.total_params:,}"
    fields = {}
    for item in spec.split(","):
        key, eq, value = item.partition("=")
        if not eq:
            raise MarkerError(f"{where}: bytes:{arg}: {item!r} is not FIELD=VALUE")
        try:
            fields[key] = json.loads(value)
        except ValueError:
            fields[key] = value
    try:
        recipe = Recipe(**fields)
    except Exception as e:  # noqa: BLE001 -- a recipe the engine refuses: its message says why
        raise MarkerError(f"{where}: bytes:{arg}: {e}") from None
    return f"{footprint.predict(sk, recipe).compressed_bytes:,}"


INLINE_GENERATORS = {"bpv": bpv, "params": params, "bytes": model_bytes}
