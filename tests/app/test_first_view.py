"""The first view a newcomer meets: the sidebar opens with the model, the three controls and their
methods; every other control is in a section they open, whose label says what it holds and marks a
setting off its default; the link restores every control; metrics carry their names for people.

Most of it on the Will-it-fit page, whose sidebar is every page's and which loads no model."""
import pytest
from streamlit.testing.v1.element_tree import Expander, Widget

from app_harness import ok, start
from engine.glossary import METRIC_NAMES
from ui import controls, recipe_panel, sidebar

FIT = "pages/fit.py"
AT_ONCE = {"ctl_source", "ctl_rank", "ctl_lowrank", "ctl_bits", "ctl_quant", "ctl_sparsity", "ctl_prune"}
HOLDS = {  # each folded widget -> what its section's label says it holds
    "ctl_device": "device", "ctl_share": "basis", "ctl_actorder": "activation order",
    "ctl_format": "number format", "ctl_dq": "number format", "ctl_granularity": "scales",
    "ctl_group": "group size", "ctl_sym": "symmetry", "ctl_pattern": "sparsity pattern", "ctl_layers": "apply to",
    "ctl_filter": "name filter", "ctl_emb": "embeddings", "ctl_preset": "llama.cpp mix", "ctl_upload": "recipe file",
    "ctl_heads": "whole heads", "ctl_channels": "mlp channels", "ctl_blocks": "blocks", "ctl_drop": "blocks",
    "ctl_importance": "structured",
}
FOLDS = {"device": sidebar.DEVICE, "grid": controls.GRID, "pattern": controls.PATTERN, "layers": controls.LAYERS,
         "gptq": controls.GPTQ, "shared": controls.SHARED, "structured": controls.STRUCTURED}


def placed(at) -> dict[str, str | None]:
    """Each sidebar widget (by key; the unkeyed download by its label) -> the label of the
    section it is in, None when it shows at once."""
    out = {}

    def walk(node, fold):
        fold = node.label if isinstance(node, Expander) else fold
        if isinstance(node, Widget):
            out[node.key or node.label] = fold
        for child in getattr(node, "children", {}).values():
            walk(child, fold)

    walk(at.sidebar, None)
    return out


def folds(at) -> dict[str, tuple[str, bool]]:
    """Each section's title (as FOLDS names it) -> (its label, whether it is open)."""
    found = {e.label: e.proto.expanded for e in at.sidebar.expander}
    return {name: next((label, is_open) for label, is_open in found.items() if label.startswith(title))
            for name, title in FOLDS.items() if any(label.startswith(title) for label in found)}


@pytest.mark.parametrize("params", [{}, {"rank": 0.5, "lowrank": "shared", "quant": "gptq"},
                                    {"format": "nf4"}], ids=["default", "shared-gptq", "nf4"])
def test_the_sidebar_opens_with_the_three_controls_and_their_methods(params):
    at = ok(start(FIT, **params))
    where = placed(at)
    assert {k for k, fold in where.items() if fold is None} == AT_ONCE
    for k, fold in where.items():
        if fold is not None:
            assert fold.split(":")[0] and ":" in fold, fold  # 'What: what it holds'
            assert HOLDS.get(k, "recipe file" if k == "Download recipe (JSON)" else k) in fold.lower(), (k, fold)
    drawn = set(where)
    assert {controls.key(f) for f in controls.CONTROLS if controls.CONTROLS[f].fold} & drawn <= set(HOLDS)
    if params.get("lowrank") == "shared":
        assert {"ctl_share", "ctl_actorder"} <= drawn
    if params.get("format") == "nf4":
        assert "ctl_dq" in drawn
    subheaders = [s.value for s in at.sidebar.subheader]
    assert subheaders == ["Model", "Low rank", "Quantization", "Pruning"]


@pytest.mark.parametrize("params, marked", [
    ({}, {}),
    ({"format": "q4_k"}, {"grid": 1}),  # the grid the format sets is the format's, not a change of its own
    ({"group": "64"}, {"grid": 1}),
    ({"bits": 4, "group": "32", "sym": "false"}, {"grid": 2}),
    ({"pattern": "2:4"}, {"pattern": 1}),
    ({"layers": "mlp", "emb": "true"}, {"layers": 2}),
    ({"device": "cpu"}, {"device": 1}),
    ({"bits": 4, "quant": "gptq", "actorder": "true"}, {"gptq": 1}),
    ({"bits": 4, "rank": 0.5}, {}),  # the three controls are no fold's
])
def test_a_section_says_when_a_link_changed_one_of_its_settings(params, marked):
    at = ok(start(FIT, **params))
    for name, (label, is_open) in folds(at).items():
        if name in marked:
            assert label == f"{FOLDS[name]} · {marked[name]} changed" and is_open, (name, label)
        else:
            assert "changed" not in label and not is_open, (name, label)
    assert not any("changed" in e.label or e.proto.expanded for e in at.sidebar.expander
                   if not any(e.label.startswith(FOLDS[n]) for n in marked))


def test_a_section_opened_by_a_change_stays_open_when_it_goes_back():
    at = ok(start(FIT, bits=4))
    assert folds(at)["grid"] == (controls.GRID, False)
    at.selectbox(key="ctl_group").set_value(64)
    ok(at.run())
    assert folds(at)["grid"] == (f"{controls.GRID} · 1 changed", True) and at.query_params["group"] == "64"
    at.selectbox(key="ctl_group").set_value(128)
    ok(at.run())
    assert folds(at)["grid"] == (controls.GRID, True)  # no longer marked, not closed under the user's hand
    assert "group" not in at.query_params


SETTINGS = {  # set one by one, as a user would (a control a choice enables, after it)
    "int grid": [("slider", "ctl_rank", 0.5), ("selectbox", "ctl_lowrank", "whitened"),
                 ("select_slider", "ctl_bits", 3), ("selectbox", "ctl_quant", "gptq"), ("toggle", "ctl_actorder", True),
                 ("selectbox", "ctl_group", 64), ("toggle", "ctl_sym", False), ("radio", "ctl_pattern", "4:8"),
                 ("selectbox", "ctl_prune", "wanda"), ("radio", "ctl_layers", "mlp"),
                 ("text_input", "ctl_filter", r"\.0\."), ("checkbox", "ctl_emb", True)],
    "nf4": [("selectbox", "ctl_format", "nf4"), ("toggle", "ctl_dq", True), ("radio", "ctl_layers", "attention"),
            ("selectbox", "ctl_device", "cpu")],
    "shared basis": [("slider", "ctl_rank", 0.25), ("selectbox", "ctl_lowrank", "shared"),
                     ("select_slider", "ctl_share", 3), ("select_slider", "ctl_bits", 8)],
}


@pytest.mark.parametrize("name", SETTINGS)
def test_a_shared_link_restores_every_control(name):
    at = ok(start(FIT))
    for kind, key, value in SETTINGS[name]:
        widget = getattr(at, kind)(key=key)
        widget.input(value) if kind == "text_input" else widget.set_value(value)
        ok(at.run())
    recipe = at.session_state["_recipe"]
    assert recipe is not None
    link = dict(at.query_params)
    again = ok(start(FIT, **link))  # a new session from the link alone
    keys = [controls.key(f) for f in controls.CONTROLS] + ["ctl_device"]
    assert {k: again.session_state[k] for k in keys if k in again.session_state} == {
        k: at.session_state[k] for k in keys if k in at.session_state}
    assert again.session_state["_recipe"] == recipe and dict(again.query_params) == link
    assert [(e.label, e.proto.expanded) for e in again.sidebar.expander] == [
        (e.label, e.proto.expanded) for e in at.sidebar.expander]  # the same sections marked, and open


def test_changed_counts_a_folds_settings_off_their_defaults():
    v = dict(recipe_panel.START, bits=4, group_size=64, number_format="int")
    assert recipe_panel.changed(["group_size", "symmetric"], v) == ["group_size"]
    v = dict(v, number_format="q4_0", group_size=32, symmetric=True)  # the format's own grid
    assert recipe_panel.changed(["number_format", "group_size", "symmetric"], v) == ["number_format"]
    v = dict(v, act_order=True)  # shown only with GPTQ
    assert recipe_panel.changed(["act_order"], v) == []


def test_explore_names_its_metrics_for_people():
    at = ok(start())  # minilm, an encoder
    labels = [m.label for m in at.metric]
    assert labels[3:] == [METRIC_NAMES[k] for k in ("cosine_to_original", "lee_spearman", "polarity_accuracy",
                                                    "polarity_precision", "polarity_recall", "polarity_f1")]
    assert not any(k in label for label in labels for k in METRIC_NAMES)
    shown = [c.value for c in at.caption] + [m.value for m in at.markdown]
    assert not any(k in text for text in shown for k in METRIC_NAMES)  # nor in a caption or the protocol
    # the uncompressed model: no arrow where nothing changed
    quality = {m.label: m for m in at.metric}
    assert quality["Sentiment accuracy"].proto.delta.startswith("same as the original")
    assert not quality["Compressed"].proto.delta
