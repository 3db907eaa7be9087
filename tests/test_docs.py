"""The documentation site (mkdocs.yml, docs/), checked against the code.

- It builds in strict mode (any warning fails), and the pages that docs/hooks.py generates hold
  what the code holds: every command and option of the parsers, every method, format, layer
  kind, layer and concept; no marker is left unreplaced.
- It reads nothing from the network: no script, stylesheet, font or image from another host.
- Every ```python block of docs/**/*.md runs, in a fresh namespace with the repository as the
  working directory, unless the line before it says `<!-- not-run: REASON -->`; at least one runs.
- Every command line of a ```sh block that starts `python -m engine`, `.venv/bin/python -m engine`
  or `python -m charts` parses with the real parser (engine.cli.build_parser).
- docs/hooks.py refuses a marker it does not know, so a typo cannot pass.
"""
from __future__ import annotations

import contextlib
import html
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"^\s*<!--\s*not-run:(.*)-->\s*$")
SHELL = ("sh", "bash", "shell", "console")
COMMANDS = {"python -m engine": "engine", ".venv/bin/python -m engine": "engine",
            "python -m charts": "charts", ".venv/bin/python -m charts": "charts"}
OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "<<", "2>", "&>"}


def load_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blocks(path: Path) -> list[dict]:
    """The fenced blocks of a markdown file: language, first line, text, and the reason of a
    `<!-- not-run: REASON -->` on the last non-blank line before it (None when there is none)."""
    lines, out, i = path.read_text(encoding="utf-8").split("\n"), [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        before = next((line for line in reversed(lines[:i]) if line.strip()), "")
        reason = NOT_RUN.match(before)
        body, j = [], i + 1
        closing = re.compile(rf"{re.escape(fence[0])}{{{len(fence)},}}")  # as long as the opening one, or longer
        while j < len(lines) and not closing.fullmatch(lines[j].strip()):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        out.append({"lang": lang.lower(), "line": i + 1, "text": "\n".join(body),
                    "not_run": reason.group(1).strip() if reason else None})
        i = j + 1
    return out


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def python_blocks() -> list[tuple[str, dict]]:
    return [(f"{p.relative_to(DOCS)}:{b['line']}", b) for p in pages() for b in blocks(p)
            if b["lang"] in ("python", "py")]


PYTHON = python_blocks()
RUN = [(where, b) for where, b in PYTHON if b["not_run"] is None]


# ---------------------------------------------------------------- the site

def test_the_site_builds_strictly_offline_and_shows_what_the_code_holds(tmp_path):
    import engine
    from charts import cli as charts_cli
    from engine import glossary
    from engine.cli import build_parser
    from engine.formats import FORMATS
    from engine.layers import KINDS
    from engine.methods import METHODS

    site = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-6000:]}"

    def page(name: str) -> str:
        return (site / name).read_text(encoding="utf-8")

    # the command-line reference: every command, each with every option of its parser
    cli = page("cli.html")
    parser = build_parser(extra=(charts_cli.add_parser,), prog=charts_cli.PROG)
    commands = parser._subparsers._group_actions[0].choices
    assert set(build_parser()._subparsers._group_actions[0].choices) < set(commands)  # report added
    for name, sub in commands.items():
        assert f'id="{name}"' in cli, f"cli page: no heading for the command {name!r}"
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"<code>{option}" in cli, f"cli page: {name} {option} is missing"

    # the architecture page: the layers and the three tables
    arch = page("architecture.html")
    for name in METHODS:
        assert f"<code>{name}</code>" in arch, f"architecture page: method {name!r} is missing"
    for name in FORMATS:
        assert f"<code>{name}</code>" in arch, f"architecture page: format {name!r} is missing"
    for role, kind in KINDS.items():
        assert f"<code>{role}</code>" in arch and type(kind).__name__ in arch, f"architecture page: kind {role!r}"
    for names, _ in engine.LAYERS:
        for name in names.split():
            assert f"<code>{name}</code>" in arch, f"architecture page: layer {name!r} is missing"

    # the glossary: every concept, float format, metric and formula of engine/glossary.py
    text = page("concepts/glossary.html")
    for key in [*glossary.CONCEPTS, *glossary.FORMAT_NOTES, *glossary.HIGHER_IS_BETTER, *glossary.FORMULAS]:
        assert f"<code>{key}</code>" in text, f"glossary page: {key!r} is missing"
    for name in getattr(glossary, "METRIC_NAMES", {}).values():
        assert html.escape(name, quote=False) in text, f"glossary page: the metric name {name!r} is missing"
    assert "\\begin" not in text and "\\frac" not in text  # formulas as plain text, no LaTeX left

    # the Python API: every public name of the engine (engine._API), and the tables' rows
    api = page("api.html")
    for name, module in [*engine._API.items(), ("Method", "methods"), ("Format", "formats")]:
        assert f'id="engine.{module}.{name}"' in api, f"api page: engine.{module}.{name} is missing"

    # no marker left unreplaced, on any page
    hooks = load_hooks()
    known = "|".join(re.escape(n) for n in (*hooks.BLOCK, *hooks.INLINE))
    built = sorted(site.rglob("*.html"))
    for path in built:
        left = re.search(rf"<!--\s*({known})(:\S*)?\s*-->", html.unescape(path.read_text(encoding="utf-8")))
        assert left is None, f"{path.relative_to(site)}: marker {left.group(0)} was not replaced"

    # offline: nothing from another host (no web fonts, no CDN), the search index is local
    remote = re.compile(r"""<(?:script|link|img|iframe|source|audio|video|embed)\b[^>]*?\b(?:src|href)\s*=\s*["']?"""
                        r"""(?:https?:)?//""", re.I)
    for path in built:
        text = path.read_text(encoding="utf-8")
        found = remote.search(text)
        assert found is None, f"{path.relative_to(site)} loads from another host: {found.group(0)}"
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, path
    for path in (site / "assets").rglob("*.css"):
        found = re.search(r"""@import\s+(?:url\()?\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//""",
                          path.read_text(encoding="utf-8"))
        assert found is None, f"{path.relative_to(site)} loads from another host: {found.group(0)}"
    assert (site / "search" / "search_index.json").is_file()
    assert 'data-md-color-scheme="slate"' in page("index.html")  # the dark palette, with its toggle


# ---------------------------------------------------------------- the code in the pages

def test_a_python_block_runs():
    assert RUN, "no ```python block of docs/ runs (each has a <!-- not-run: ... --> before it)"
    for where, b in PYTHON:
        if b["not_run"] is not None:
            assert b["not_run"], f"docs/{where}: <!-- not-run: REASON --> needs its reason"


def test_every_not_run_comment_stands_before_a_python_block():
    for path in pages():
        lines = path.read_text(encoding="utf-8").split("\n")
        for i, line in enumerate(lines):
            if NOT_RUN.match(line):
                after = next((x for x in lines[i + 1:] if x.strip()), "")
                m = FENCE.match(after)
                assert m and m.group(3) in ("python", "py"), \
                    f"docs/{path.relative_to(DOCS)}:{i + 1}: <!-- not-run --> stands before no ```python block"


@pytest.mark.parametrize("where,block", RUN, ids=[w for w, _ in RUN])
def test_python_block_runs(where, block, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = compile(block["text"], f"docs/{where}", "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, {"__name__": "__docs__"})  # noqa: S102 -- the documentation's own examples


def command_lines() -> list[tuple[str, str, list[str]]]:
    """(where, which parser, its arguments) of every command line of a ```sh block that runs the
    engine's or the charts' command line: continuation lines joined, `$ ` prompts and comments
    dropped, cut before a pipe or redirection."""
    out = []
    for path in pages():
        for b in blocks(path):
            if b["lang"] not in SHELL:
                continue
            lines = b["text"].split("\n")
            i = 0
            while i < len(lines):
                start, line = i, lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i]
                i += 1
                line = line.strip().removeprefix("$ ")
                prefix = next((p for p in COMMANDS if line == p or line.startswith(p + " ")), None)
                if prefix is None:
                    continue
                lex = shlex.shlex(line, posix=True, punctuation_chars=True)
                lex.whitespace_split, lex.commenters = True, ""
                tokens = []
                for token in lex:
                    if token.startswith("#"):
                        break
                    if token in OPERATORS:
                        if token.startswith(">") and tokens and tokens[-1].isdigit():
                            tokens.pop()  # 2>/dev/null
                        break
                    tokens.append(token)
                out.append((f"docs/{path.relative_to(DOCS)}:{b['line'] + 1 + start}: {line}", COMMANDS[prefix],
                            tokens[3:]))
    return out


def test_every_command_line_in_the_docs_parses():
    from charts import cli as charts_cli
    from engine.cli import build_parser
    from engine.errors import UserError

    parsers = {"engine": build_parser(), "charts": build_parser(extra=(charts_cli.add_parser,), prog=charts_cli.PROG)}
    lines = command_lines()
    assert lines, "no command line of the engine in the docs' ```sh blocks"
    failures = []
    for where, which, argv in lines:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                parsers[which].parse_args(argv)
        except SystemExit as e:
            if e.code not in (0, None):  # --help exits 0
                failures.append(f"{where}\n    exits {e.code}")
        except UserError as e:
            failures.append(f"{where}\n    {e}")
    assert not failures, "command lines the parser refuses:\n" + "\n".join(failures)


# ---------------------------------------------------------------- the hook

def test_the_hook_fills_markers_and_refuses_one_it_does_not_know():
    from engine.drivers import footprint
    from engine.formats import FORMATS
    from engine.recipe.recipe import Recipe

    hooks = load_hooks()
    render = hooks.render
    for typo in ("<!-- methods-tabel -->", "<!-- bvp:q4_k -->", "text <!-- glosary --> text"):
        with pytest.raises(hooks.MarkerError, match="unknown marker"):
            render(f"# Page\n\n{typo}\n")
    with pytest.raises(hooks.MarkerError, match="malformed marker"):
        render("4-bit codes: <!-- bpv: q4_k --> bits a value")
    with pytest.raises(hooks.MarkerError, match="alone on its line"):
        render("the methods: <!-- methods-table -->")
    with pytest.raises(hooks.MarkerError, match="no such format"):
        render("<!-- bpv:q4_kk -->")
    with pytest.raises(hooks.MarkerError, match="not a shipped config"):
        render("<!-- params:meta-llama/Llama-3-8B -->")
    with pytest.raises(hooks.MarkerError, match="must hold the marker"):
        render("# Command line\n\nNo reference.\n", "cli.md")

    assert render("Q4_K: <!-- bpv:q4_k --> bits a value") == f"Q4_K: {FORMATS['q4_k'].bits_per_value:g} bits a value"
    assert render("<!-- bpv:q4_k -->") == "4.5"
    assert render("<!-- bpv:q4_0 --> and <!-- bpv:q8_0 -->") == "4.5 and 8.5"
    kept = "<!-- a comment in prose -->\n`<!-- bpv:q4_k -->`\n```\n<!-- no-such-marker -->\n```\n<!-- not-run: slow -->"
    assert render(kept) == kept  # prose comments, code and not-run are left as they are
    table = render("## Methods\n\n<!-- methods-table -->\n")
    assert "| `svd` | lowrank |" in table and "<!--" not in table
    gpt2 = footprint.open_skeleton("gpt2")
    assert render("<!-- params:gpt2 -->") == f"{gpt2.total_params:,}"
    assert render("<!-- bytes:gpt2 -->") == f"{2 * gpt2.total_params:,}"
    assert render("<!-- bytes:gpt2:bits=4,group_size=64 -->") == \
        f"{footprint.predict(gpt2, Recipe(bits=4, group_size=64)).compressed_bytes:,}"
    # a block marker's headings go one level below the heading it follows
    assert "\n### `run` { #run }" in render("# CLI\n\n## Reference\n\n<!-- cli-reference -->\n")


def test_plain_docstrings_become_markdown_for_the_api_page():
    to_markdown = load_hooks().docstring_to_markdown
    doc = ("What it is.\n\nbits: 2..8, or 16\n    for none.\nsparsity: a fraction.\n\n>>> f(1)\n2\n\n"
           "    a table\n    kept")
    assert to_markdown(doc) == ("What it is.\n\n- bits: 2..8, or 16 for none.\n- sparsity: a fraction.\n\n"
                                "```pycon\n>>> f(1)\n2\n```\n\n    a table\n    kept")


def test_every_formula_of_the_glossary_reads_as_plain_text():
    from engine.glossary import FORMULAS

    load_hooks()  # puts docs/ on the path, where the generators (page_parts) live
    import page_parts

    for key, latex in FORMULAS.items():
        text = page_parts.plain_formula(latex)
        assert "\\" not in text and "{" not in text and "&" not in text, f"{key}: a LaTeX command page_parts.LATEX lacks"
