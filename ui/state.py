"""Controls, the URL, caches and the per-session workspace.

- The loaded model (engine Explorer) is cached once per process and never mutated.
- Each browser session compresses its own working copy (engine Workspace).
- Results are cached per (model, recipe) in a store shared by all sessions.
"""
from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass

import streamlit as st

from engine import footprint
from engine.storage import explorer as export
from engine.errors import UserError
from engine.glossary import CONCEPTS
from engine.models import ALIASES, DEFAULT_MODEL, available_devices
from engine.recipe import BITS, DISTILL_LR, LOWRANK_METHODS, PRUNE_METHODS, QUANT_METHODS, Recipe
from engine.session import Explorer, Workspace

OTHER = "Hub id or local folder…"
SIDEBAR_MODEL = "the sidebar's model"
CONFIG_REF = "A config.json, model folder or hub id…"
GROUP_SIZES = ["32", "64", "128", "256", "per channel", "per tensor"]
PATTERNS = ["unstructured", "2:4", "4:8", "1:4"]
SCOPES = {"all": "All layers", "attention": "Attention", "mlp": "MLP"}
# URL parameter -> (session key, default, parser)
URL = {
    "model": ("ctl_model", DEFAULT_MODEL, str),
    "device": ("ctl_device", "auto", str),
    "rank": ("ctl_rank", 1.0, float),
    "bits": ("ctl_bits", 16, int),
    "group": ("ctl_group", "128", str),
    "sym": ("ctl_sym", True, lambda v: v.lower() in ("1", "true", "yes")),
    "sparsity": ("ctl_sparsity", 0.0, float),
    "pattern": ("ctl_pattern", "unstructured", str),
    "layers": ("ctl_scope", "all", str),
    "filter": ("ctl_filter", "", str),
    "emb": ("ctl_emb", False, lambda v: v.lower() in ("1", "true", "yes")),
    "lowrank": ("ctl_lowrank_method", "svd", str),
    "prune": ("ctl_prune_method", "magnitude", str),
    "quant": ("ctl_quant_method", "rtn", str),
    "actorder": ("ctl_act_order", False, lambda v: v.lower() in ("1", "true", "yes")),
}
CHOICES = {"ctl_bits": BITS, "ctl_group": GROUP_SIZES, "ctl_pattern": PATTERNS, "ctl_scope": tuple(SCOPES),
           "ctl_lowrank_method": LOWRANK_METHODS, "ctl_prune_method": PRUNE_METHODS,
           "ctl_quant_method": QUANT_METHODS}
METHOD_LABELS = {"svd": "SVD", "whitened": "Whitened SVD (calibrated)", "magnitude": "Magnitude",
                 "wanda": "Wanda (calibrated)", "rtn": "Round to nearest", "gptq": "GPTQ (calibrated)",
                 "kmeans": "k-means codebook"}


@dataclass
class Context:
    """What a page needs: the shared model, this session's workspace and the current recipe."""

    ref: str
    device: str
    explorer: Explorer
    work: Workspace
    recipe: Recipe
    export: str | None = None  # the export folder whose values the workspace holds

    @property
    def key(self) -> str:
        return _key(self.ref, self.device, self.export)


def _key(ref: str, device: str, export_folder: str | None) -> str:
    """What a model's cached results are keyed by: its ref, its device, and the export it holds."""
    return f"{ref}@{device}" + (f"@export:{export_folder}" if export_folder else "")


# ---------------------------------------------------------------------------------------
# Timing marks (server side), read by the latency benchmark
# ---------------------------------------------------------------------------------------


def start_run():
    st.session_state["_app"] = True  # app.py has run in this session
    st.session_state["_t0"] = time.perf_counter()
    st.session_state["timings"] = {}


def _no_page():
    pass


def page_start(page_file: str):
    """The first call of every page: if Streamlit ran the page without app.py, rerun through app.py.

    Until a run of app.py has called st.navigation in this server process, Streamlit takes the
    `pages/` folder for its older multipage mode, and a request for a page's URL (a tab left on
    /spectra reconnecting to a restarted server) runs that page file alone: no sidebar, no
    context. A call of st.navigation ends that mode for the whole process; the rerun then runs
    app.py on the same page, with the same URL parameters.
    """
    if st.session_state.get("_app"):
        return
    st.navigation([st.Page(_no_page, url_path="_", default=True), st.Page(page_file)], position="hidden")
    st.rerun()


def mark(name: str):
    st.session_state.setdefault("timings", {})[name] = time.perf_counter() - st.session_state.get("_t0", 0.0)


# ---------------------------------------------------------------------------------------
# URL <-> controls
# ---------------------------------------------------------------------------------------


def _init_from_url():
    if st.session_state.get("ctl_ready"):
        return
    bad = []
    for param, (key, default, parse) in URL.items():
        value = default
        if param in st.query_params:
            try:
                value = parse(st.query_params[param])
            except ValueError:
                bad.append(param)
            if key in CHOICES and value not in CHOICES[key]:
                bad.append(param)
                value = default
        st.session_state[key] = value
    r = st.session_state["ctl_rank"]
    st.session_state["ctl_rank"] = min(1.0, max(0.05, round(r * 20) / 20))
    st.session_state["ctl_sparsity"] = min(0.95, max(0.0, round(st.session_state["ctl_sparsity"] * 20) / 20))
    ref = st.session_state["ctl_model"]
    st.session_state["ctl_source"] = ref if ref in ALIASES else OTHER
    st.session_state["ctl_ref"] = "" if ref in ALIASES else ref
    st.session_state["url_errors"] = bad
    st.session_state["ctl_ready"] = True


def _write_url():
    for param, (key, default, _) in URL.items():
        value = st.session_state.get(key, default)
        if value == default:
            st.query_params.pop(param, None)
        else:
            st.query_params[param] = str(value).lower() if isinstance(value, bool) else str(value)


def _load_recipe_file():
    """on_change of the recipe uploader: set every control from the file (before widgets draw)."""
    f = st.session_state.get("ctl_upload")
    if f is None:
        return
    try:
        r = Recipe.from_json(f.getvalue().decode("utf-8", errors="replace"))
    except UserError as e:
        st.session_state["upload_error"] = f"{f.name}: {e}"
        return
    st.session_state["upload_error"] = _set_controls(r, f.name)


def _set_controls(r: Recipe, name: str) -> str | None:
    """Set every control from a recipe (before the widgets draw); a message when a field cannot be shown."""
    problem = None
    ratio = r.rank_ratio if r.rank_ratio is not None else 1.0
    if r.rank is not None:
        problem = (f"{name}: the app sets rank as a fraction of full rank; the file's "
                   f"absolute rank {r.rank} was replaced by 0.5 (the command line takes it)")
        ratio = 0.5
    st.session_state.update({
        "ctl_rank": min(1.0, max(0.05, round(ratio * 20) / 20)),
        "ctl_bits": r.bits,
        "ctl_group": {"tensor": "per tensor", "channel": "per channel"}.get(r.granularity, str(r.group_size)),
        "ctl_sym": r.symmetric,
        "ctl_sparsity": 0.0 if r.pattern != "unstructured" else min(0.95, round(r.sparsity * 20) / 20),
        "ctl_pattern": r.pattern if r.pattern in PATTERNS else "unstructured",
        "ctl_scope": r.group,
        "ctl_filter": r.layers or "",
        "ctl_emb": r.include_embeddings,
        "ctl_lowrank_method": r.lowrank_method,
        "ctl_prune_method": r.prune_method,
        "ctl_quant_method": r.quant_method,
        "ctl_act_order": r.act_order,
    })
    if str(r.group_size) not in GROUP_SIZES and r.granularity == "group":
        st.session_state["ctl_group"] = "128"
        problem = f"{name}: group size {r.group_size} is not offered here; shown as 128"
    return problem


def _open_export(folder: str) -> str:
    """The sidebar was given an export folder: remember it, set the controls from its recipe
    when it is new, and return its source model's ref."""
    try:
        manifest = export.read_manifest(folder)
    except UserError as e:
        st.session_state["export"] = None
        st.sidebar.error(str(e))
        return folder
    known = st.session_state.get("export") or {}
    if known.get("folder") != folder:
        st.session_state["upload_error"] = _set_controls(Recipe.from_dict(manifest["recipe"]), folder)
    st.session_state["export"] = {"folder": folder, "recipe": manifest["recipe"]}
    return manifest["model"]["ref"]


# ---------------------------------------------------------------------------------------
# Sidebar
# ---------------------------------------------------------------------------------------


def sidebar() -> tuple[str, str, Recipe | None]:
    """Draw the model picker and the three controls; returns (model ref, device, recipe or None)."""
    _init_from_url()
    sb = st.sidebar
    sb.subheader("Model")
    sb.selectbox("Model", [*ALIASES, OTHER], key="ctl_source",
                 format_func=lambda a: f"{a} ({ALIASES[a].kind})" if a in ALIASES else a,
                 help="The offline aliases, any Hugging Face hub id (needs a network), or a local model folder.")
    ref = st.session_state["ctl_source"]
    if ref == OTHER:
        ref = sb.text_input("Hub id or folder", key="ctl_ref", placeholder="e.g. gpt2 or ./my-model",
                            help="A model folder, a hub id, or an export folder (python -m engine export, or "
                                 "the Explore page's download, unzipped): its source model loads with the "
                                 "export's stored values.").strip()
    sb.selectbox("Device", ["auto", *available_devices()], key="ctl_device",
                 help="auto: the GPU when there is one, else the CPU.")
    st.session_state["ctl_model"] = ref or DEFAULT_MODEL
    if ref and export.is_export(ref):  # the URL keeps the folder; the source model is what loads
        ref = _open_export(ref)
    else:
        st.session_state["export"] = None

    sb.subheader("Low rank")
    sb.slider("Rank (fraction of full rank)", 0.05, 1.0, step=0.05, key="ctl_rank",
              help=CONCEPTS["rank"] + " " + CONCEPTS["rank_ratio"])
    sb.selectbox("Low-rank method", LOWRANK_METHODS, key="ctl_lowrank_method", format_func=METHOD_LABELS.get,
                 disabled=st.session_state["ctl_rank"] >= 1, help=CONCEPTS["lowrank_method"])
    sb.subheader("Quantization")
    sb.select_slider("Bit width", BITS, key="ctl_bits", format_func=lambda b: "16 (off)" if b == 16 else str(b),
                     help=CONCEPTS["bits"])
    quant_on = st.session_state["ctl_bits"] < 16
    sb.selectbox("Group size", GROUP_SIZES, key="ctl_group", disabled=not quant_on,
                 help=CONCEPTS["group_size"] + " " + CONCEPTS["scale"])
    sb.toggle("Symmetric", key="ctl_sym", disabled=not quant_on, help=CONCEPTS["symmetric"])
    sb.selectbox("Quantization method", QUANT_METHODS, key="ctl_quant_method", format_func=METHOD_LABELS.get,
                 disabled=not quant_on, help=CONCEPTS["quant_method"])
    if st.session_state["ctl_quant_method"] == "gptq":
        sb.toggle("Activation order", key="ctl_act_order", disabled=not quant_on, help=CONCEPTS["act_order"])
    sb.subheader("Pruning")
    sb.radio("Pattern", PATTERNS, key="ctl_pattern", horizontal=True, help=CONCEPTS["nm"])
    nm = st.session_state["ctl_pattern"] != "unstructured"
    sb.slider("Sparsity", 0.0, 0.95, step=0.05, key="ctl_sparsity", disabled=nm,
              help=CONCEPTS["sparsity"] + (" (set by the N:M pattern)" if nm else ""))
    sb.selectbox("Pruning method", PRUNE_METHODS, key="ctl_prune_method", format_func=METHOD_LABELS.get,
                 disabled=not nm and st.session_state["ctl_sparsity"] == 0, help=CONCEPTS["prune_method"])
    sb.subheader("Layers")
    sb.radio("Apply to", list(SCOPES), key="ctl_scope", format_func=SCOPES.get, horizontal=True,
             help=CONCEPTS["layer_group"])
    sb.text_input("Name filter (regular expression)", key="ctl_filter", placeholder=r"e.g. layers\.[0-3]\.",
                  help="Only layers whose name matches are compressed; empty: no filter.")
    sb.checkbox("Include embeddings and output head", key="ctl_emb",
                help="Off by default: the input embeddings and a tied output head stay at 16 bits.")
    _write_url()

    recipe = None
    try:
        recipe = current_recipe()
    except UserError as e:
        sb.error(str(e))
    with sb.expander("Recipe file"):
        if recipe is not None:
            st.download_button("Download recipe (JSON)", recipe.to_json(), "recipe.json", "application/json",
                               width="stretch")
        st.file_uploader("Load a recipe", type=["json"], key="ctl_upload", on_change=_load_recipe_file)
        if st.session_state.get("upload_error"):
            st.error(st.session_state["upload_error"])
    if st.session_state.get("url_errors"):
        sb.warning("Ignored bad link values: " + ", ".join(st.session_state["url_errors"]))
    return ref or DEFAULT_MODEL, st.session_state["ctl_device"], recipe


def current_recipe() -> Recipe:
    s = st.session_state
    group = s["ctl_group"]
    nm = s["ctl_pattern"] != "unstructured"
    return Recipe(
        rank_ratio=None if s["ctl_rank"] >= 1 else round(s["ctl_rank"], 2),
        bits=int(s["ctl_bits"]),
        granularity={"per tensor": "tensor", "per channel": "channel"}.get(group, "group"),
        group_size=int(group) if group.isdigit() else 128,
        symmetric=bool(s["ctl_sym"]),
        sparsity=0.0 if nm else round(s["ctl_sparsity"], 2),
        pattern=s["ctl_pattern"],
        include_embeddings=bool(s["ctl_emb"]),
        group=s["ctl_scope"],
        layers=s["ctl_filter"].strip() or None,
        lowrank_method=s["ctl_lowrank_method"],
        prune_method=s["ctl_prune_method"],
        quant_method=s["ctl_quant_method"],
        act_order=bool(s["ctl_act_order"]) and s["ctl_quant_method"] == "gptq",
    )


# ---------------------------------------------------------------------------------------
# The model, loaded once per process, and this session's workspace
# ---------------------------------------------------------------------------------------


_preloads: dict[tuple[str, str], Future] = {}


def preload(ref: str, device: str = "auto") -> None:
    """Start loading a model in a background thread (the launcher does this for the default
    model while the browser connects); the first page then takes it from there. After the
    model, also in the background: its reference outputs, sorted magnitudes and SVDs."""
    future: Future = Future()

    def work():
        try:
            ex = Explorer.open(ref, None if device == "auto" else device)
        except BaseException as e:  # noqa: BLE001 -- the page opens it again and shows the error
            future.set_exception(e)
            return
        future.set_result(ex)
        ex.prepare_in_background(factorize=True)
        ex.evaluator()

    _preloads[(ref, device)] = future
    threading.Thread(target=work, name=f"preload-{ref}").start()


@st.cache_resource(show_spinner=False, max_entries=3)
def _explorer(ref: str, device: str) -> Explorer:
    future = _preloads.pop((ref, device), None)
    ex = None
    if future is not None:
        try:
            ex = future.result()
        except Exception:  # noqa: BLE001 -- open it here, where the error reaches the page
            ex = None
    ex = ex or Explorer.open(ref, None if device == "auto" else device)
    ex.prepare_in_background(factorize=True)
    return ex


_factorize_lock = threading.Lock()


def open_context(ref: str, device: str, recipe: Recipe) -> Context | None:
    """Load the model (with progress) once per process; None, with an error box, when that fails.
    With an export picked in the sidebar, this session's workspace holds the export's values
    (its files checked against the manifest) for as long as the controls show its recipe."""
    exported = st.session_state.get("export")
    key = _key(ref, device, exported["folder"] if exported else None)
    try:
        cached = st.session_state.get("loaded_keys", set())
        if key in cached:
            ex = _explorer(ref, device)
        else:
            with st.status(f"Loading {ref}…", expanded=True) as status:
                st.write("Reading the weights and tokenizer.")
                ex = _explorer(ref, device)
                st.write(f"{ex.kind}, {ex.total_params:,} parameters, on {ex.loaded.device}.")
                status.update(label=f"{ref} ready", state="complete", expanded=False)
            st.session_state["loaded_keys"] = cached | {key}
    except UserError as e:
        st.error(f"Could not open {ref}: {e}")
        return None
    except Exception as e:  # a model the engine cannot handle: say so, keep the page
        st.error(f"Could not open {ref}: {type(e).__name__}: {e}")
        return None
    works = st.session_state.setdefault("workspaces", {})
    if key not in works:
        works.clear()  # one compressed copy per session: the model in use
        works[key] = ex.workspace()
    work = works[key]
    if exported:
        stored = Recipe.from_dict(exported["recipe"])
        if recipe == dataclasses.replace(stored, distill_steps=0, distill_lr=DISTILL_LR):
            recipe = stored  # the controls show the export's recipe (distillation is in its values)
            if work.applied is None or work.applied.export != exported["folder"]:
                try:
                    with st.spinner(f"Reading the export {exported['folder']} and checking its files…"):
                        export.load_into(work, exported["folder"])
                except UserError as e:  # refused before any layer was filled
                    st.error(str(e))
                    return None
    return Context(ref, device, ex, works[key], recipe, exported["folder"] if exported else None)


METHOD_VARIANTS = {
    "As in the sidebar": None,
    "Plain (SVD, magnitude, round to nearest)": {"lowrank_method": "svd", "prune_method": "magnitude",
                                                 "quant_method": "rtn", "act_order": False},
    "Calibrated (whitened SVD, Wanda, GPTQ)": {"lowrank_method": "whitened", "prune_method": "wanda",
                                               "quant_method": "gptq", "act_order": False},
    "k-means weight sharing": {"quant_method": "kmeans", "act_order": False},
}


def with_methods(recipe: Recipe, variant: str, sidebar: Recipe) -> Recipe:
    """`recipe` with the methods of a Trade-offs variant (the sidebar's for 'As in the sidebar')."""
    fields = METHOD_VARIANTS[variant] or {k: getattr(sidebar, k) for k in
                                          ("lowrank_method", "prune_method", "quant_method", "act_order")}
    return Recipe.from_dict({**recipe.to_dict(), **fields})


def ensure_calibration(ctx: Context, recipe: Recipe | None = None) -> None:
    """Run the calibration text through the model (once per model) before a calibrated method."""
    ex = ctx.explorer
    if (recipe or ctx.recipe).calibrated and not ex.calibrated():
        with st.spinner("Calibration: running the calibration text through the model (once per model)…"):
            ex.calibration()


def ensure_factors(ctx: Context) -> None:
    """The SVD of every layer, once per model, with a progress bar: before the first low-rank
    recipe, the Spectra page or a sweep with ranks (usually already done in the background
    since loading; the bar then shows the layers that were left)."""
    ex = ctx.explorer
    if ex.factorized():
        return
    with _factorize_lock:
        if ex.factorized():
            return
        bar = st.progress(0.0, text="Singular value decomposition of every layer (once per model)")
        ex.factorize(progress=lambda k, n, name: bar.progress(k / n, text=f"SVD {k}/{n}: {name}"))
        bar.empty()


def context() -> Context | None:
    return st.session_state.get("_ctx")


# ---------------------------------------------------------------------------------------
# Results per (model, recipe), shared by every session
# ---------------------------------------------------------------------------------------


class ResultStore:
    """A bounded map (model, recipe) -> {'memory', 'errors', 'quick', 'full', 'compare:...'}."""

    def __init__(self, size: int = 512):
        self.size = size
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, field: str):
        with self._lock:
            entry = self._d.get(key)
            return None if entry is None else entry.get(field)

    def put(self, key: tuple, field: str, value):
        with self._lock:
            self._d.setdefault(key, {})[field] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)


@st.cache_resource(show_spinner=False)
def store() -> ResultStore:
    return ResultStore()


def cached(ctx: Context, recipe: Recipe, field: str, compute):
    key = (ctx.key, recipe.to_json())
    value = store().get(key, field)
    if value is None:
        ctx.work.ensure(recipe)
        value = compute()
        store().put(key, field, value)
    return value


def memory(ctx: Context, recipe: Recipe | None = None) -> dict:
    """Memory report (engine MemoryReport.to_dict) with each layer's relative error and SQNR."""
    recipe = recipe or ctx.recipe

    return cached(ctx, recipe, "memory", ctx.work.report)


def quality(ctx: Context, quick: bool, recipe: Recipe | None = None) -> dict:
    recipe = recipe or ctx.recipe
    return cached(ctx, recipe, "quick" if quick else "full", lambda: ctx.work.evaluate(quick=quick))


def quality_if_known(ctx: Context, recipe: Recipe | None = None) -> dict | None:
    return store().get((ctx.key, (recipe or ctx.recipe).to_json()), "full")


def distilled(ctx: Context, steps: int, lr: float, run: bool) -> tuple[Recipe, dict | None]:
    """The current recipe distilled `steps` steps at `lr`, and its result ({'distillation',
    'full', 'memory'}) when known; with `run`, computes it first, with a progress bar."""
    recipe = Recipe.from_dict({**ctx.recipe.to_dict(), "distill_steps": steps, "distill_lr": lr})
    key = (ctx.key, recipe.to_json())
    if run and store().get(key, "distillation") is None:
        ctx.work.ensure(ctx.recipe)
        bar = st.progress(0.0, text="Distillation")
        applied = ctx.work.distill(steps, lr, progress=lambda k, n, loss: bar.progress(
            k / n, text=f"Distillation: step {k}/{n}, loss {loss:.4f}"))
        bar.empty()
        with st.spinner("Scoring the distilled model (full protocol)…"):
            store().put(key, "full", ctx.work.evaluate())
            store().put(key, "memory", ctx.work.report())
        store().put(key, "distillation", applied.distillation.to_dict())
    if store().get(key, "distillation") is None:
        return recipe, None
    return recipe, {f: store().get(key, f) for f in ("distillation", "full", "memory")}


def energy_grid(ctx: Context) -> dict:
    return _cached_model(ctx, "energy_grid", ctx.explorer.energy_grid)


def _cached_model(ctx: Context, field: str, compute):
    key = (ctx.key, "model")
    value = store().get(key, field)
    if value is None:
        value = compute()
        store().put(key, field, value)
    return value


def baseline(ctx: Context) -> dict:
    return _cached_model(ctx, "baseline", lambda: ctx.explorer.evaluator().baseline())


def protocol(ctx: Context) -> dict:
    return ctx.explorer.evaluator().protocol


# ---------------------------------------------------------------------------------------
# Will it fit? Planning from configs (no weights)
# ---------------------------------------------------------------------------------------


@st.cache_data(show_spinner=False)
def shipped_configs() -> dict[str, str]:
    return footprint.shipped()


def fit_ladder() -> list[str]:
    return [r.describe() for r in footprint.LADDER]


@st.cache_resource(show_spinner="Building the model from its config on the meta device…", max_entries=16)
def _skeleton(ref: str) -> footprint.Skeleton:
    return footprint.open_skeleton(ref)


@st.cache_data(show_spinner=False, ttl=60, max_entries=256)
def fit(ref: str, recipe: Recipe, batch: int, tokens: int, kv_bits: int) -> tuple[dict, list[dict]]:
    """(footprint of the recipe, per device the mildest ladder recipe that fits); this machine's
    free memory is read again after a minute."""
    sk = _skeleton(ref)
    return (footprint.footprint(sk, recipe, batch, tokens, kv_bits),
            footprint.fitting(sk, batch, tokens, kv_bits))


def holds_export(ctx: Context) -> bool:
    """Whether the workspace holds the values read from the sidebar's export."""
    held = ctx.work.applied
    return bool(ctx.export) and held is not None and held.export == ctx.export and held.recipe == ctx.recipe


def export_zip(ctx: Context, entropy: bool = False) -> tuple[str, bytes, str]:
    """(file name, zip, what its tensor bytes are) of the current recipe's export: written from
    the workspace (Huffman-coded with `entropy`), or, when the workspace holds a loaded
    export, that export's own files."""
    from pathlib import Path

    if holds_export(ctx):
        data, manifest = export.zip_folder(ctx.export), export.read_manifest(ctx.export)
        name = Path(ctx.export).name
    else:
        ctx.work.ensure(ctx.recipe)
        name = "-".join(filter(None, [Path(ctx.ref).name, _slug(ctx.recipe.describe())]))
        if entropy:
            name += "-huffman"
        data, manifest = export.zipped(ctx.work, name, entropy=entropy)
    stored, fixed = manifest["tensor_bytes"], manifest["predicted_bytes"]
    what = (f"{stored:,} bytes of tensors, Huffman-coded ({fixed:,} at fixed width: {stored / fixed:.1%})"
            if manifest.get("entropy") else f"{stored:,} bytes of tensors (fixed width)")
    return f"{name}.zip", data, what


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower()[:80]
