"""Text helpers of the generated documentation (docs/page_parts.py, docs/cli_reference.py): the
repository on the import path, the marker error, and markdown tables and cells."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the engine, importable whatever the working directory
    sys.path.insert(0, str(ROOT))


class MarkerError(PluginError):
    """A marker the hook does not know or cannot fill (MkDocs reports it in one line and stops)."""


def cell(text) -> str:
    """Text for one cell of a markdown table: on one line, its pipes and `<` escaped outside code
    spans (inside them, markdown shows them as they are)."""
    parts = re.split(r"(`[^`]*`)", " ".join(("" if text is None else str(text)).split()))
    return "".join(p if p.startswith("`") else p.replace("|", "\\|").replace("<", "&lt;") for p in parts)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph ('' when there is none)."""
    if not doc:
        return ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    m = re.search(r"(?<!\bal)(?<!\be\.g)(?<!\bi\.e)(?<!\bvs)\.(?=\s+[A-Z`(])", paragraph)
    return paragraph[:m.end()] if m else paragraph


def code(name) -> str:
    return f"`{name}`"
