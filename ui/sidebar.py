"""The sidebar on every page: the model and device, the recipe's controls, the recipe file."""
from __future__ import annotations

import streamlit as st

from engine.errors import UserError, failure
from engine.models import ALIASES, DEFAULT_MODEL, available_devices
from engine.recipe import Recipe
from engine.storage import formats

from . import context, controls, tour

OTHER = "Hub id or local folder…"


def _open_export(folder: str) -> str:
    """The sidebar was given an export (this explorer's folder, a GGUF file or a compressed-tensors
    folder written by `export`): remember it, set the controls from its recipe when it is new,
    and return its source model's ref."""
    try:
        source, recipe = formats.source_of(folder)
    except UserError as e:
        st.session_state["export"] = None
        st.sidebar.error(str(e))
        return folder
    known = st.session_state.get("export") or {}
    if known.get("folder") != folder:
        st.session_state["upload_error"] = controls.set_controls(recipe, folder)
    st.session_state["export"] = {"folder": folder, "recipe": recipe.to_dict()}
    return source


def _model() -> str:
    """The model picker and the device; returns the model's ref (an export folder: its source)."""
    if "ctl_source" not in st.session_state:
        ref = st.session_state["ctl_model"]
        st.session_state["ctl_source"] = ref if ref in ALIASES else OTHER
        st.session_state["ctl_ref"] = "" if ref in ALIASES else ref
    sb = st.sidebar
    sb.subheader("Model")
    sb.selectbox("Model", [*ALIASES, OTHER], key="ctl_source",
                 format_func=lambda a: f"{a} ({ALIASES[a].kind})" if a in ALIASES else a,
                 help="The offline aliases, any Hugging Face hub id (needs a network), or a local model folder.")
    ref = st.session_state["ctl_source"]
    if ref == OTHER:
        ref = sb.text_input("Hub id or folder", key="ctl_ref", placeholder="e.g. gpt2 or ./my-model",
                            help="A model folder, a hub id, or an export folder (python -m engine export, or "
                                 "the Explore page's download, unzipped), a GGUF file or compressed-tensors folder "
                                 "written by export: its source model loads with the export's stored values.").strip()
    if st.session_state["ctl_device"] not in ("auto", *available_devices()):
        st.session_state["url_errors"].append("device")
        st.session_state["ctl_device"] = "auto"
    sb.selectbox("Device", ["auto", *available_devices()], key="ctl_device",
                 help="auto: the GPU when there is one, else the CPU.")
    st.session_state["ctl_model"] = ref or DEFAULT_MODEL
    if ref and formats.kind(ref):  # the URL keeps the export; the source model is what loads
        return _open_export(ref)
    st.session_state["export"] = None
    return ref or DEFAULT_MODEL


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
    controls.init_from_url(DEFAULT_MODEL)
    tour.from_url()
    ref = _model()
    recipe = controls.draw(_apply_preset(ref))
    controls.write_url(recipe, DEFAULT_MODEL)
    with st.sidebar.expander("Recipe file"):
        if recipe is not None:
            st.download_button("Download recipe (JSON)", recipe.to_json(), "recipe.json", "application/json",
                               width="stretch")
        st.file_uploader("Load a recipe", type=["json"], key="ctl_upload", on_change=controls.load_recipe_file)
        if st.session_state.get("upload_error"):
            st.error(st.session_state["upload_error"])
    if st.session_state.get("url_errors"):
        st.sidebar.warning("Ignored bad link values: " + ", ".join(st.session_state["url_errors"]))
    return ref, st.session_state["ctl_device"], recipe
