"""The sidebar on every page: the model and device, the recipe's controls (ui.recipe_panel), the recipe file."""
from __future__ import annotations

import os

import streamlit as st

from engine.errors import UserError, failure
from engine.models.loading import ALIASES, available_devices
from engine.recipe.recipe import Recipe
from engine.storage import detect as formats

from . import access, context, controls, recipe_panel, tour_steps

OTHER = "Hub id or local folder…"
DEVICE = "Device: where the model runs"
RECIPE_FILE = "Recipe file: download or load the settings (JSON)"


def _open_export(folder: str, policy) -> str:
    """The sidebar was given an export (this explorer's folder, a GGUF file or a compressed-tensors
    folder written by `export`): remember it, set the controls from its recipe when it is new,
    and return its source model's ref (Refused, the controls untouched, when the policy does not
    allow the source)."""
    try:
        source, recipe = formats.source_of(folder)
    except UserError as e:
        st.session_state["export"] = None
        st.sidebar.error(str(e))
        return folder
    source = policy.check(source, listed_only=False)
    known = st.session_state.get("export") or {}
    if known.get("folder") != folder:
        st.session_state["upload_error"] = controls.set_controls(recipe, folder)
    st.session_state["export"] = {"folder": folder, "recipe": recipe.to_dict()}
    return source


def _open(policy, asked: str) -> str:
    """The ref that loads for the picker's `asked` (an export: its source); Refused by the policy
    before the filesystem is touched, and then nothing in the session has changed."""
    ref = policy.check(asked)
    if formats.kind(ref):  # the URL keeps the export; the source model is what loads
        source = _open_export(ref, policy)
    else:
        source = ref
        st.session_state["export"] = None
    st.session_state["ctl_model"] = ref
    return source


def _label(policy, ref: str) -> str:
    if ref in ALIASES:
        return f"{ref} ({ALIASES[ref].kind})"
    if policy.served and ref in policy.folders:
        return f"{os.path.relpath(ref, policy.root)} (folder)"
    return ref


def _model(policy, default: str) -> str:
    """The model picker and the device; returns the model's ref (an export folder: its source).

    Served with a policy (ui.access), the picker lists what it allows, and the text field is
    there only when visitors may type; a reference it refuses, typed or from the link, shows one
    line and leaves the session on its model and recipe."""
    refused = None
    if "ctl_source" not in st.session_state:  # the session's first run: the model from the link
        ref = st.session_state["ctl_model"]
        try:
            ref = policy.check(ref)
        except access.Refused as e:
            refused, ref = str(e), default
        st.session_state["ctl_source"] = ref if ref in policy.listed else OTHER
        st.session_state["ctl_ref"] = "" if ref in policy.listed else ref
    sb = st.sidebar
    sb.subheader("Model")
    sb.selectbox("Model", [*policy.listed, *([OTHER] if policy.typing else [])], key="ctl_source",
                 format_func=lambda a: _label(policy, a),
                 help="The offline aliases, any Hugging Face hub id (needs a network), or a local model folder."
                 if not policy.served else "The models this server offers.")
    if policy.served:
        sb.caption("This server limits the models it opens to this list"
                   + (" and what its policy allows to be typed." if policy.typing else "."))
    asked = st.session_state["ctl_source"]
    if asked == OTHER:
        asked = sb.text_input("Hub id or folder", key="ctl_ref", placeholder="e.g. gpt2 or ./my-model",
                              help="A model folder, a hub id, or an export folder (python -m engine export, or "
                                   "the Explore page's download, unzipped), a GGUF file or compressed-tensors folder "
                                   "written by export: its source model loads with the export's stored values.").strip()
    if st.session_state["ctl_device"] not in ("auto", *available_devices()):
        st.session_state["url_errors"].append("device")
        st.session_state["ctl_device"] = "auto"
    with recipe_panel.fold(DEVICE, int(st.session_state["ctl_device"] != "auto")):
        st.selectbox("Device", ["auto", *available_devices()], key="ctl_device",
                     help="auto: the GPU when there is one, else the CPU.")
    try:
        source = _open(policy, asked or default)
        st.session_state["_model_in_use"] = (st.session_state["ctl_model"], source, st.session_state["export"])
    except access.Refused as e:  # the model, the export and the controls stay as they were
        refused = str(e)
        st.session_state["ctl_model"], source, st.session_state["export"] = st.session_state.get(
            "_model_in_use", (default, default, None))
    if refused:
        sb.error(refused)
    return source


def _apply_preset(ref: str):
    """on_change of the llama.cpp mix picker: every control (and the per-layer rules) from the
    mix on this model, the picker back to its prompt."""
    def apply():
        name = st.session_state.get("ctl_preset")
        st.session_state["ctl_preset"] = ""
        if not name:
            return
        try:
            ex = context.loaded_explorer(ref, st.session_state["ctl_device"])
            recipe = ex.preset(name, controls.recipe_from(controls.values()).base())
        except UserError as e:
            st.session_state["upload_error"] = f"{name.upper()}: {e}"
            return
        except Exception as e:  # noqa: BLE001 -- an error box, not a traceback
            st.session_state["upload_error"] = failure(f"llama.cpp's {name.upper()}", e)
            return
        st.session_state["upload_error"] = controls.set_controls(recipe, f"llama.cpp's {name.upper()}")
    return apply


def sidebar() -> tuple[str, str, Recipe | None]:
    """Draw the model picker and the controls; returns (model ref, device, recipe or None)."""
    policy = access.for_visitors()  # a policy file that cannot be used: an error box, no model
    controls.init_from_url(policy.default)
    tour_steps.from_url()
    ref = _model(policy, policy.default)
    recipe = recipe_panel.draw(_apply_preset(ref), lambda r: context.loaded_explorer(
        ref, st.session_state["ctl_device"]).each_removes(r))
    controls.write_url(recipe, policy.default)
    with recipe_panel.fold(RECIPE_FILE, 0):
        if recipe is not None:
            st.download_button("Download recipe (JSON)", recipe.to_json(), "recipe.json", "application/json",
                               width="stretch")
        st.file_uploader("Load a recipe", type=["json"], key="ctl_upload", on_change=controls.load_recipe_file)
    return ref, st.session_state["ctl_device"], recipe
