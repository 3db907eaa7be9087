"""MkDocs hooks: the documentation's generated parts, computed from the code at build time so that
they cannot drift from it.

A page asks for a generated part with an HTML comment, a *marker*. Two sorts:

Block markers, alone on their line (indented as the text around them; the generated text keeps
that indentation, and its headings start one level below the heading the marker follows):

    <!-- cli-reference -->   every command of `python -m engine` (engine.cli.build_parser) and the
                             `report` of `python -m charts` (charts.cli.add_parser): usage, arguments
                             and options with their help
    <!-- methods-table -->   engine.methods.METHODS: name, kind, label, what it does, calibrated, formats
    <!-- formats-table -->   engine.formats.FORMATS: name, family, bits, block, bits per value, what it is
    <!-- kinds-table -->     engine.layers.KINDS: role, kind class, the first sentence of its docstring
    <!-- layers -->          engine.LAYERS, bottom up: each layer, its description, its modules and the
                             first sentence of each one's docstring
    <!-- glossary -->        every table of engine/glossary.py: CONCEPTS, FORMAT_NOTES, HIGHER_IS_BETTER
                             with METRIC_NAMES, and FORMULAS (as plain text); a table added there
                             and not here fails the build
    <!-- bytes-rules -->     the docstring of engine/formats/bytes.py, the byte rules
    <!-- presets-table -->   engine.recipe.presets.PRESETS: llama.cpp's mixes and their default type

Inline markers, anywhere in a paragraph, replaced by one figure:

    <!-- bpv:FORMAT -->               bits per value of a number format of FORMATS, e.g. bpv:q4_k -> 4.5
    <!-- params:MODEL -->             parameters of MODEL, e.g. params:minilm -> 22,713,216
    <!-- bytes:MODEL -->              MODEL's bytes uncompressed (2 a parameter), e.g. bytes:gpt2
    <!-- bytes:MODEL:FIELD=V,... -->  its bytes under the recipe of those fields, as engine.drivers.
                                      footprint.predict counts them, e.g. bytes:llama-3-8b:bits=4
                                      (each V read as JSON where it parses, else as a string)

MODEL is a shipped config (assets/configs/MODEL.json) or `minilm` (the installed wheel's
config): the model is built on the meta device from its config alone; nothing is downloaded and
no weight is loaded.

A marker is an HTML comment holding one word of lowercase letters, digits and hyphens, optionally
followed by `:` and an argument without spaces. An unknown marker, a malformed one (a comment whose
first word names a marker but that does not parse) or a block marker inside a line fails the
build, so a typo cannot pass. Other comments (with spaces: prose) are left as they are, and so
is whatever lies in code (fenced blocks and `inline code`), so that the docs can show a marker.
`<!-- not-run: REASON -->` is no marker: it tells tests/test_docs.py not to run the next
```python block.

A page may also have to hold markers (REQUIRED below): the page fails the build without them.

The Python API page (docs/api.md, mkdocstrings) reads the engine's docstrings, which are plain
text rather than markdown: `PlainDocstrings`, a griffe extension that mkdocs.yml loads from this
file, turns their field lists (a line per field, continued by indented lines) into markdown
lists and their `>>>` examples into code blocks; the docstrings themselves stay as they are.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from griffe import Extension

sys.path.insert(0, str(Path(__file__).resolve().parent))  # page_parts (and its helpers), beside this file
from page_parts import GENERATORS, INLINE_GENERATORS, MarkerError  # noqa: E402

BLOCK = ("cli-reference", "methods-table", "formats-table", "kinds-table", "layers", "glossary", "bytes-rules",
         "presets-table")
INLINE = ("bpv", "params", "bytes")
NOT_MARKERS = ("not-run",)  # comments that tests/test_docs.py reads
# pages that must hold these markers (the generated part would otherwise be lost without a word)
REQUIRED = {
    "cli.md": ("cli-reference",),
    "architecture.md": ("layers", "methods-table", "formats-table", "kinds-table"),
    "concepts/glossary.md": ("glossary",),
}

COMMENT = re.compile(r"<!--((?:(?!-->).)*)-->", re.S)  # one comment: no `-->` inside
MARKER = re.compile(r"([a-z][a-z0-9-]*)(?::(\S*))?")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
CODE_SPAN = re.compile(r"(`+)(?:.+?)(?<!`)\1(?!`)", re.S)




# ---------------------------------------------------------------- MkDocs events

def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace the page's markers with what the code holds."""
    return render(markdown, page.file.src_uri)


# ---------------------------------------------------------------- markers

def render(markdown: str, where: str = "<string>") -> str:
    """`markdown` with every marker replaced; MarkerError on an unknown or malformed one."""
    out, fence, seen, level = [], None, set(), 1
    for number, line in enumerate(markdown.split("\n"), 1):
        opened = FENCE.match(line)
        if fence is not None:  # inside a fenced block: as it is
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                    and not line.strip()[len(opened.group(1)):].strip():
                fence = None
            out.append(line)
            continue
        if opened:
            fence = opened.group(1)
            out.append(line)
            continue
        heading = re.match(r"(#{1,6})\s", line)
        if heading:
            level = len(heading.group(1))
        out.append(_render_line(line, f"{where}:{number}", seen, min(level + 1, 6)))
    for name in REQUIRED.get(where, ()):
        if name not in seen:
            raise MarkerError(f"{where}: the page must hold the marker <!-- {name} --> (docs/hooks.py, REQUIRED)")
    return "\n".join(out)


def _render_line(line: str, where: str, seen: set, level: int = 2) -> str:
    """One line outside fenced code; a block marker's headings start at `level` (one below the
    heading the marker follows)."""
    stripped = line.strip()
    whole = COMMENT.fullmatch(stripped)
    parsed = _parse(whole.group(1), where) if whole else None
    if parsed:
        name, arg = parsed
        if name in BLOCK:
            if arg is not None:
                raise MarkerError(f"{where}: the marker <!-- {name} --> takes no argument")
            seen.add(name)
            indent = line[:len(line) - len(line.lstrip())]
            text = GENERATORS[name](level).strip("\n")
            return "\n".join(indent + t if t else t for t in text.split("\n"))
    parts, last = [], 0  # code spans are left as they are
    for span in CODE_SPAN.finditer(line):
        parts.append(_render_inline(line[last:span.start()], where, seen))
        parts.append(span.group(0))
        last = span.end()
    parts.append(_render_inline(line[last:], where, seen))
    return "".join(parts)


def _render_inline(text: str, where: str, seen: set) -> str:
    def one(m: re.Match) -> str:
        parsed = _parse(m.group(1), where)
        if parsed is None:
            return m.group(0)
        name, arg = parsed
        if name in BLOCK:
            raise MarkerError(f"{where}: the marker <!-- {name} --> must stand alone on its line")
        seen.add(name)
        return INLINE_GENERATORS[name](arg, where)

    return COMMENT.sub(one, text)


def _parse(body: str, where: str):
    """(name, argument or None) of a marker; None for a comment that is prose (or not-run)."""
    body = body.strip()
    first = re.split(r"[\s:]", body, maxsplit=1)[0]
    if first in NOT_MARKERS:
        return None
    m = MARKER.fullmatch(body)
    if m is None:
        if first in BLOCK or first in INLINE:
            raise MarkerError(f"{where}: malformed marker <!-- {body} --> (docs/hooks.py says the syntax)")
        return None  # prose
    name, arg = m.group(1), m.group(2)
    if name not in BLOCK and name not in INLINE:
        known = ", ".join(BLOCK) + "; inline: " + ", ".join(f"{n}:..." for n in INLINE)
        raise MarkerError(f"{where}: unknown marker <!-- {body} --> (known: {known})")
    if name in INLINE and not arg:
        raise MarkerError(f"{where}: the marker <!-- {name}:... --> needs its argument")
    return name, arg




# ---------------------------------------------------------------- the API page's docstrings

def docstring_to_markdown(text: str) -> str:
    """A plain-text docstring as markdown: a paragraph of fields with hanging indents (`name:
    what it is`, continued by indented lines) becomes a list, a run of `>>>` examples a code
    block; other paragraphs, and indented blocks (already code in markdown), stay as they are."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text.strip("\n")):
        lines = block.split("\n")
        if lines[0].lstrip().startswith(">>>"):
            out.append("```pycon\n" + "\n".join(line.strip() for line in lines) + "\n```")
            continue
        indents = [len(line) - len(line.lstrip()) for line in lines]
        if indents[0] == 0 and any(indents[1:]) and not lines[0].startswith(("- ", "* ")):
            items = []
            for line, indent in zip(lines, indents):
                if indent == 0 or not items:
                    items.append(line.strip())
                else:
                    items[-1] += " " + line.strip()
            out.append("\n".join(f"- {item}" for item in items) if len(items) > 1 else items[0])
            continue
        out.append(block)
    return "\n\n".join(out)


class PlainDocstrings(Extension):
    """Griffe extension (mkdocs.yml: mkdocstrings' `extensions`): each docstring through
    docstring_to_markdown before mkdocstrings renders it."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = docstring_to_markdown(obj.docstring.value)
