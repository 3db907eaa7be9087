"""The sidebar's recipe controls as a newcomer meets them.

Rank, bit width and sparsity, each with its method, show at once, section by section; every other
control sits in a fold (an expander) whose title says what it holds (`Control.fold` in
ui.controls) and which counts the settings in it that are off their defaults ("· 2 changed"),
opened when there is one. The widgets, their keys and the link are ui.controls' own: the layout
changes nothing a link or a test sets.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

from engine.errors import UserError
from engine.formats.ggml import layout_note
from engine.glossary import FORMAT_NOTES
from engine.recipe.presets import PRESETS
from engine.recipe.recipe import Recipe

from . import controls
from .controls import CONTROLS, FORMAT_FIXES, GRID, PATTERN, STRUCTURED

MIX = "llama.cpp mixes: a GGML type for each layer"
RULES = "Per-layer rules: other settings for some layers"
INTRO = ("Three ways to shrink the model: a lower rank, fewer bits per weight, more zeros. Every page follows "
         "these controls, and so does the link.")
START = {f: controls.widget_value(f, Recipe()) for f in CONTROLS}  # each widget's value for the default recipe
OPENED = "_folds_opened"  # the folds a change has opened in this session


def shown(field: str, v: dict) -> bool:
    c = CONTROLS[field]
    return not c.shown or c.shown(v)


def changed(fields, v: dict) -> list[str]:
    """Those of `fields` shown off their defaults (by widget values `v`); the grid a llama.cpp or
    float format sets itself is the format's, not a change of its own."""
    fixed = FORMAT_FIXES if v["number_format"] != "int" else ()
    return [f for f in fields if f not in fixed and shown(f, v) and v[f] != START[f]]


def fold(title: str, n_changed: int, parent=None):
    """A section the user opens: `title` (what it holds), then ' · N changed' when N of its
    settings are off their defaults, and open then. Once a change has opened it, it stays open
    for the session: the frontend sets an expander to `expanded` whenever its label changes, and
    would close it under the user's hand when the last setting goes back to its default."""
    opened = st.session_state.setdefault(OPENED, set())
    if n_changed:
        opened.add(title)
    label = f"{title} · {n_changed} changed" if n_changed else title
    return (parent or st.sidebar).expander(label, expanded=title in opened)


def _widget(parent, field: str, v: dict) -> None:
    c = CONTROLS[field]
    kw = {"key": controls.key(field), "help": c.help, "disabled": bool(c.enabled and not c.enabled(v))}
    if c.labels:
        kw["format_func"] = lambda x, labels=c.labels: labels.get(x, str(x))
    if c.widget == "slider":
        parent.slider(c.label, c.span[0], c.span[1], step=c.span[2], **kw)
    elif c.widget in ("select_slider", "selectbox", "radio"):
        extra = {"horizontal": True} if c.widget == "radio" else {}
        getattr(parent, c.widget)(c.label, c.choices(field), **kw, **extra)
    else:
        getattr(parent, c.widget)(c.label, **kw)


def _set_by(field: str, v: dict) -> str | None:
    """Why a control shown at once does not move: the setting in a fold that sets it."""
    if field == "bits" and v["number_format"] != "int":
        return f"Set by the number format {v['number_format'].upper()}: see *{GRID.split(':')[0]}* below."
    if field == "sparsity" and v["pattern"] != "unstructured":
        n, m = map(int, v["pattern"].split(":"))
        return f"Set by the pattern {v['pattern']} ({1 - n / m:.0%} zeros): see *{PATTERN.split(':')[0]}* below."
    return None


def _format_note(parent) -> None:
    """How the grid relates to llama.cpp's types, or what a float format is, under the grid's controls."""
    v = controls.values()
    try:
        note = layout_note(controls.recipe_from(v))
    except UserError:
        note = None
    note = note or FORMAT_NOTES.get(v["number_format"])
    if note:
        parent.caption(note)


def _mix(apply_preset: Callable[[], None]) -> None:
    with fold(MIX, 0):
        st.selectbox("llama.cpp mix", ["", *PRESETS], key="ctl_preset", on_change=apply_preset,
                     format_func=lambda p: p.upper() if p else "Apply one of llama.cpp's mixes…",
                     help="Each layer in the GGML type llama.cpp's quantize gives it under this mix (the V and "
                          "down projections of some blocks wider, the head q6_k or q8_0, embeddings included): a "
                          "recipe of per-layer rules, which the controls then show.")


def _rules(rules) -> None:
    with fold(RULES, len(rules)):
        st.caption(f"{len(rules)} rule{'s' if len(rules) > 1 else ''} from a recipe file, a plan or a llama.cpp mix "
                   "(first match wins; not in the link: download the recipe to share them): "
                   + "; ".join(f"/{m if len(m) < 48 else m[:45] + '…'}/ → " + ", ".join(f"{k} {v}" for k, v in items)
                               for m, items in rules[:3])
                   + ("…" if len(rules) > 3 else ""))
        if st.button("Clear the per-layer rules", key="ctl_clear_rules"):
            st.session_state["ctl_per_layer"] = ()
            st.rerun()


def _removes_note(parent, removes) -> None:
    """What each structured control removes on this model, in parameters and fp16 bytes."""
    try:
        recipe = controls.recipe_from(controls.values())
        each = removes(recipe) if recipe.structured else {}
    except UserError as e:
        parent.caption(str(e))
        return
    names = {"heads": "Heads", "channels": "Channels", "blocks": "Blocks"}
    for k, row in each.items():
        parent.caption(f"{names[k]}: {row['what']}: {row['params']:,} parameters, "
                       f"{2 * row['params'] / 2**20:,.1f} MiB at fp16 (on its own; the model shrinks to what "
                       "the Explore page shows)")


def draw(apply_preset: Callable[[], None] | None = None, removes: Callable[[Recipe], dict] | None = None) -> Recipe | None:
    """The recipe controls, section by section; returns the recipe (None, with an error box,
    when the values do not make one). `removes(recipe)` says what each structured field removes
    (engine.drivers.explorer.Explorer.each_removes), under those controls."""
    sb = st.sidebar
    if st.session_state.get("upload_error"):  # a recipe file, a plan or a mix not shown as it is: above the controls
        sb.error(st.session_state["upload_error"])
    if st.session_state.get("url_errors"):
        sb.warning("Ignored bad link values: " + ", ".join(st.session_state["url_errors"]))
    controls.follow_format(controls.values())  # before the grid's widgets draw
    v = controls.values()
    sb.caption(INTRO)
    for section in dict.fromkeys(c.section for c in CONTROLS.values()):
        fields = [f for f, c in CONTROLS.items() if c.section == section and shown(f, v)]
        at_once = [f for f in fields if not CONTROLS[f].fold]
        if at_once:
            sb.subheader(section)
        for f in at_once:
            _widget(sb, f, v)
            if _set_by(f, v):
                sb.caption(_set_by(f, v))
        for title in dict.fromkeys(CONTROLS[f].fold for f in fields if CONTROLS[f].fold):
            inside = [f for f in fields if CONTROLS[f].fold == title]
            with fold(title, len(changed(inside, v))) as box:
                for f in inside:
                    _widget(box, f, v)
                if title == GRID:
                    _format_note(box)
                if title == STRUCTURED and removes:
                    _removes_note(box, removes)
        if section == "Quantization" and apply_preset:
            _mix(apply_preset)
    rules = st.session_state.get("ctl_per_layer", ())
    if rules:
        _rules(rules)
    try:
        return controls.recipe_from(controls.values(), rules)
    except UserError as e:
        sb.error(str(e))
        return None

