"""The sidebar's controls, the URL and the recipe, derived from the recipe's own field list.

Every recipe field the sidebar shows has one `Control` here, keyed by the field's name; its
widget key is `ctl_<url name>` and its URL parameter the field's declared `url` name
(engine.recipe.recipe: Recipe.fields()), so the link, the widgets and the recipe cannot drift apart.
`NOT_IN_SIDEBAR` says where each other field is set. The three controls and their methods show
at once; each other control is in a fold, a section the user opens (`Control.fold`, drawn by
ui.recipe_panel).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import streamlit as st

from engine.errors import UserError
from engine.formats import FORMATS, GRID_FIELDS
from engine.glossary import CONCEPTS
from engine.methods import METHODS
from engine.recipe.recipe import Recipe

FIELDS = Recipe.fields()
DEFAULTS = Recipe().to_dict()
METHOD_LABELS = {name: m.label for name, m in METHODS.items()}
SHARE_BLOCKS_OFFERED = (2, 3, 4, 6)  # the slider's stops (the recipe takes 2 to 64)
FORMAT_LABELS = {name: f.label for name, f in FORMATS.items()}
FORMAT_FIXES = GRID_FIELDS  # what a llama.cpp or float format sets itself
GRANULARITY_LABELS = {"group": "per group", "channel": "per output channel", "tensor": "per tensor"}
SCOPES = {"all": "All layers", "attention": "Attention", "mlp": "MLP", "experts": "Experts (MoE)",
          "router": "Routers (MoE)"}
PATTERNS = ("unstructured", "2:4", "4:8", "1:4")
GROUP_SIZES = (32, 64, 128, 256)
NOT_IN_SIDEBAR = {
    "rank": "an absolute rank: the app sets the rank as a fraction of each layer's full rank (rank_ratio)",
    "distill_steps": "the Explore page's 'Recover by distillation'",
    "distill_lr": "the Explore page's 'Recover by distillation'",
    "schedule_steps": "the Explore page's 'Gradual schedule' (with its distillation steps after each)",
    "per_layer": "a recipe file (or a plan from the Sensitivity page): shown under 'Per-layer rules'",
}
# the folds' titles, each saying what it holds (a fold without a control here: ui.recipe_panel, ui.sidebar)
SHARED = "Shared basis: blocks per basis"
GPTQ = "GPTQ option: activation order"
GRID = "Number format and grid: scales, group size, symmetry"
PATTERN = "Sparsity pattern: unstructured or N:M (2:4, …)"
STRUCTURED = "Structured: whole heads, MLP channels, blocks"
IMPORTANCE_LABELS = {"calibration": "output change on calibration text", "magnitude": "weight magnitude"}
LAYERS = "Which layers: apply to, name filter, embeddings"


@dataclass(frozen=True)
class Control:
    """How the sidebar shows one recipe field."""

    section: str
    label: str
    widget: str  # 'slider' | 'select_slider' | 'selectbox' | 'radio' | 'toggle' | 'checkbox' | 'text_input'
    help: str
    options: tuple | None = None  # selectable values (default: the field's declared choices)
    span: tuple | None = None  # a slider's (min, max, step)
    labels: dict | None = None  # option -> label
    off: object = None  # the widget value that stands for None (a slider's 1.0, an empty text)
    enabled: Callable[[dict], bool] | None = None  # from the widget values by field name
    shown: Callable[[dict], bool] | None = None
    fold: str | None = None  # the title of the section the user opens to reach it; None: shown at once

    def choices(self, field: str) -> tuple | None:
        return self.options or FIELDS[field].allowed


def _quantized(v):
    return v["bits"] < 16


def _own_grid(v):
    return v["number_format"] == "int"


# in the order they are drawn: each section's controls shown at once, then its folds
CONTROLS: dict[str, Control] = {
    "rank_ratio": Control("Low rank", "Rank (fraction of full rank; 1 = off)", "slider",
                          CONCEPTS["rank"] + " " + CONCEPTS["rank_ratio"], span=(0.05, 1.0, 0.05), off=1.0),
    "lowrank_method": Control("Low rank", "Low-rank method", "selectbox", CONCEPTS["lowrank_method"],
                              labels=METHOD_LABELS, enabled=lambda v: v["rank_ratio"] < 1),
    "share_blocks": Control("Low rank", "Blocks sharing one basis", "select_slider", CONCEPTS["share_blocks"],
                            options=SHARE_BLOCKS_OFFERED, enabled=lambda v: v["rank_ratio"] < 1,
                            shown=lambda v: v["lowrank_method"] == "shared", fold=SHARED),
    "bits": Control("Quantization", "Bit width", "select_slider", CONCEPTS["bits"],
                    labels={16: "16 (off)"}, enabled=_own_grid),
    "quant_method": Control("Quantization", "Quantization method", "selectbox", CONCEPTS["quant_method"],
                            labels=METHOD_LABELS, enabled=_quantized),
    "act_order": Control("Quantization", "Activation order", "toggle", CONCEPTS["act_order"], enabled=_quantized,
                         shown=lambda v: v["quant_method"] == "gptq", fold=GPTQ),
    "number_format": Control("Quantization", "Number format", "selectbox", CONCEPTS["number_format"],
                             labels=FORMAT_LABELS, fold=GRID),
    "double_quant": Control("Quantization", "Double quantization", "toggle", CONCEPTS["double_quant"],
                            shown=lambda v: FORMATS[v["number_format"]].double_quant, fold=GRID),
    "granularity": Control("Quantization", "Scales", "selectbox", CONCEPTS["scale"], labels=GRANULARITY_LABELS,
                           enabled=lambda v: _quantized(v) and _own_grid(v), fold=GRID),
    "group_size": Control("Quantization", "Group size", "selectbox", CONCEPTS["group_size"], options=GROUP_SIZES,
                          enabled=lambda v: _quantized(v) and _own_grid(v) and v["granularity"] == "group", fold=GRID),
    "symmetric": Control("Quantization", "Symmetric", "toggle", CONCEPTS["symmetric"],
                         enabled=lambda v: _quantized(v) and _own_grid(v), fold=GRID),
    "sparsity": Control("Pruning", "Sparsity", "slider", CONCEPTS["sparsity"], span=(0.0, 0.95, 0.05),
                        enabled=lambda v: v["pattern"] == "unstructured"),
    "prune_method": Control("Pruning", "Pruning method", "selectbox", CONCEPTS["prune_method"], labels=METHOD_LABELS,
                            enabled=lambda v: v["pattern"] != "unstructured" or v["sparsity"] > 0),
    "pattern": Control("Pruning", "Pattern", "radio", CONCEPTS["nm"], options=PATTERNS, fold=PATTERN),
    "prune_heads": Control("Pruning", "Attention heads removed (fraction per block)", "slider",
                           CONCEPTS["prune_heads"], span=(0.0, 0.9, 0.05), fold=STRUCTURED),
    "prune_channels": Control("Pruning", "MLP channels removed (fraction per block)", "slider",
                              CONCEPTS["prune_channels"], span=(0.0, 0.9, 0.05), fold=STRUCTURED),
    "prune_blocks": Control("Pruning", "Whole blocks removed (the least important)", "slider", CONCEPTS["prune_blocks"],
                            span=(0, 16, 1), enabled=lambda v: not (v["remove_blocks"] or "").strip(), fold=STRUCTURED),
    "remove_blocks": Control("Pruning", "Or remove these blocks (indices, e.g. 3,4,5)", "text_input",
                             CONCEPTS["prune_blocks"], off="", fold=STRUCTURED),
    "structure_importance": Control("Pruning", "Importance", "radio", CONCEPTS["structure_importance"],
                                    labels=IMPORTANCE_LABELS, fold=STRUCTURED),
    "group": Control("Layers", "Apply to", "radio", CONCEPTS["layer_group"], labels=SCOPES,
                     fold=LAYERS),
    "layers": Control("Layers", "Name filter (regular expression)", "text_input",
                      "Only layers whose name matches are compressed; empty: no filter.", off="", fold=LAYERS),
    "include_embeddings": Control("Layers", "Include embeddings and output head", "checkbox",
                                  "Off by default: the input embeddings and a tied output head stay at 16 bits.",
                                  fold=LAYERS),
}


def key(field: str) -> str:
    """The session key of a field's widget."""
    return f"ctl_{FIELDS[field].url}"


def values() -> dict:
    """The widget values, by field name (a widget not drawn in the last run: its default)."""
    return {f: st.session_state.get(key(f), widget_value(f, Recipe())) for f in CONTROLS}


# ---------------------------------------------------------------------------------------
# widget values <-> recipe <-> URL
# ---------------------------------------------------------------------------------------


def _snap(field: str, value):
    """A value moved into its control's domain: a slider's range and step."""
    lo, hi, step = CONTROLS[field].span
    return min(hi, max(lo, round(value / step) * step))


def widget_value(field: str, recipe: Recipe):
    """The widget value that shows a recipe's field."""
    c, value = CONTROLS[field], getattr(recipe, field)
    if value is None:
        return c.off
    if field == "sparsity" and recipe.pattern != "unstructured":
        return 0.0  # the pattern sets it
    return _snap(field, value) if c.span else value


def recipe_from(v: dict, per_layer=()) -> Recipe:
    """The recipe the widget values (by field name) and per-layer rules show."""
    d = {f: (None if c.off is not None and v[f] == c.off else v[f]) for f, c in CONTROLS.items()}
    d["rank_ratio"] = None if d["rank_ratio"] is None else round(d["rank_ratio"], 2)
    d["sparsity"] = 0.0 if v["pattern"] != "unstructured" else round(v["sparsity"], 2)
    d["layers"] = (d["layers"] or "").strip() or None
    d["remove_blocks"] = (d["remove_blocks"] or "").strip() or None
    d["prune_heads"], d["prune_channels"] = round(v["prune_heads"], 2), round(v["prune_channels"], 2)
    if d["remove_blocks"]:
        d["prune_blocks"] = 0  # the indices replace the count
    d["act_order"] = bool(v["act_order"]) and v["quant_method"] == "gptq"
    d["double_quant"] = bool(v["double_quant"]) and FORMATS[v["number_format"]].double_quant
    d["share_blocks"] = v["share_blocks"] if v["lowrank_method"] == "shared" else DEFAULTS["share_blocks"]
    if v["number_format"] != "int":  # the format sets them
        d = {f: x for f, x in d.items() if f not in FORMAT_FIXES}
    return Recipe.from_dict({**d, "per_layer": per_layer})


def follow_format(v: dict) -> None:
    """Show a llama.cpp or float format's own bits, blocks and symmetry in the (disabled) grid controls."""
    if v["number_format"] != "int":
        for f, x in FORMATS[v["number_format"]].fixed().items():
            st.session_state[key(f)] = x


def set_controls(r: Recipe, name: str) -> str | None:
    """Set every control from a recipe (before the widgets draw); a message when a field cannot
    be shown as it is."""
    problems = []
    if r.rank is not None:
        problems.append(f"the app sets rank as a fraction of full rank; the absolute rank {r.rank} was replaced "
                        "by 0.5 (the command line takes it)")
        r = r.updated(rank_ratio=0.5)
    if r.group_size not in GROUP_SIZES:
        problems.append(f"group size {r.group_size} is not offered here; shown as 128")
        r = r.updated(group_size=128)
    if r.share_blocks not in SHARE_BLOCKS_OFFERED:
        problems.append(f"{r.share_blocks} blocks sharing a basis is not offered here; shown as 2")
        r = r.updated(share_blocks=2)
    if r.pattern not in PATTERNS:
        problems.append(f"pattern {r.pattern} is not offered here; shown as unstructured")
        r = r.updated(pattern="unstructured", sparsity=0.0)
    for f in CONTROLS:
        st.session_state[key(f)] = widget_value(f, r)
    st.session_state["ctl_per_layer"] = r.per_layer
    return f"{name}: " + "; ".join(problems) if problems else None


def _parse(field: str, text: str):
    """A URL parameter's text as the field's value; ValueError when it is not one."""
    t = FIELDS[field].type
    if t is bool:
        if text.lower() not in ("1", "0", "true", "false", "yes", "no"):
            raise ValueError(text)
        return text.lower() in ("1", "true", "yes")
    value = t(text)
    choices = CONTROLS[field].choices(field)
    if choices is not None and value not in choices:
        raise ValueError(text)
    return value


def init_from_url(default_model: str) -> None:
    """Once per session: the controls from the URL (bad values reported, defaults kept)."""
    if st.session_state.get("ctl_ready"):
        return
    bad = []
    start = Recipe()
    v = {f: widget_value(f, start) for f in CONTROLS}
    for f in CONTROLS:
        param = FIELDS[f].url
        if param in st.query_params:
            try:
                v[f] = _parse(f, st.query_params[param])
                v[f] = _snap(f, v[f]) if CONTROLS[f].span else v[f]
            except ValueError:
                bad.append(param)
    if v["pattern"] != "unstructured":
        v["sparsity"] = 0.0  # the pattern sets it, as when a recipe sets the controls (widget_value)
    for f in CONTROLS:
        st.session_state[key(f)] = v[f]
    st.session_state["ctl_per_layer"] = ()
    st.session_state["ctl_model"] = st.query_params.get("model", default_model)
    st.session_state["ctl_device"] = st.query_params.get("device", "auto")
    st.session_state["url_errors"] = bad
    st.session_state["ctl_ready"] = True


def write_url(recipe: Recipe | None, default_model: str) -> None:
    """The URL from the controls: the model, the device and every recipe field off its default
    (the link keeps its last recipe while the controls make none)."""
    off_default = link_params(recipe, st.session_state["ctl_model"], default_model, st.session_state["ctl_device"])
    for param in ("model", "device", *(FIELDS[f].url for f in CONTROLS if recipe)):
        if param in off_default:
            st.query_params[param] = off_default[param]
        else:
            st.query_params.pop(param, None)


def link_params(recipe: Recipe | None, model: str, default_model: str, device: str = "auto") -> dict[str, str]:
    """The URL parameters that open the app on `model` with `recipe`'s controls: those off their
    defaults, as text."""
    params = {"model": model, "device": device}
    params.update({FIELDS[f].url: getattr(recipe, f) for f in CONTROLS} if recipe else {})
    start = {"model": default_model, "device": "auto", **{FIELDS[f].url: DEFAULTS[f] for f in CONTROLS}}
    return {p: str(v).lower() if isinstance(v, bool) else str(v) for p, v in params.items()
            if v != start[p] and v is not None}


def load_recipe_file() -> None:
    """on_change of the recipe uploader: set every control from the file (before widgets draw)."""
    f = st.session_state.get("ctl_upload")
    if f is None:
        return
    try:
        r = Recipe.from_json(f.getvalue().decode("utf-8", errors="replace"))
    except UserError as e:
        st.session_state["upload_error"] = f"{f.name}: {e}"
        return
    st.session_state["upload_error"] = set_controls(r, f.name)
