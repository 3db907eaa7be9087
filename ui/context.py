"""The model and this session's workspace: what every page works on.

- The loaded model (engine Explorer) is cached once per process and never mutated; the
  launcher can start loading it before the first visit (`preload`).
- Each browser session compresses its own working copy (engine Workspace), held for it within
  the budget of ui.caches (released when over it, idle or the session ended; made again, with
  the session's recipe, when next needed).
- app.py opens the context (`open_context`) after the sidebar; pages read it (`context`).
- Whatever fails shows one line in an error box and the session goes on (`shielded`).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
import time
import uuid
import weakref
from concurrent.futures import Future

import streamlit as st

from engine.drivers.explorer import Explorer
from engine.drivers.workspace import Workspace
from engine.errors import UserError, failure
from engine.hardware.machine import pick_threads
from engine.recipe.recipe import DISTILL_LR, Recipe
from engine.storage import detect as formats

from . import allocator, caches

log = logging.getLogger(__name__)
allocator.give_back_large_blocks()  # once per server process (this module is imported once)
pick_threads()  # torch's threads: the cores this process may use (`streamlit run app.py` too)
# pandas imported whole before any page runs (app.py imports this module first; a second session
# waits for the first's import of it): plotly looks pandas up in sys.modules, where another
# session's first import of it (st.dataframe) can be half done ("partially initialized module
# 'pandas' has no attribute 'Series'")
importlib.import_module("pandas")

class Context:
    """What a page needs: the shared model, this session's workspace and the current recipe
    (`export`: the export folder picked in the sidebar, whose values the workspace holds while
    the recipe is the export's, `export_recipe`). It keeps the model weakly and the workspace not
    at all (ui.caches holds both), so that a session left idle holds nothing the caches let go."""

    def __init__(self, ref: str, device: str, explorer: Explorer, recipe: Recipe, export: str | None = None,
                 owner: str = "", export_recipe: Recipe | None = None):
        self.ref, self.device, self.recipe, self.export, self.owner = ref, device, recipe, export, owner
        self.export_recipe = export_recipe
        self._explorer = weakref.ref(explorer)

    @property
    def key(self) -> str:
        return _key(self.ref, self.device, self.export)

    @property
    def explorer(self) -> Explorer:
        """The shared model (loaded again if the cache let it go meanwhile)."""
        return self._explorer() or _explorer(self.ref, self.device)

    def _workspace(self) -> tuple[Workspace, bool]:
        return caches.WORKSPACES.get(self.owner, self.key, self.explorer.workspace)

    @property
    def work(self) -> Workspace:
        """This session's workspace. One made now (the session's first, or after a release)
        first takes this context's recipe, or the export's values."""
        work, fresh = self._workspace()
        if fresh:
            self._fill(work, self.recipe)
        return work

    def holding(self, recipe: Recipe) -> Workspace:
        """This session's workspace holding `recipe` (applied unless it already does)."""
        work, fresh = self._workspace()
        if fresh or work.applied is None or work.applied.recipe != recipe:
            self._fill(work, recipe)
        return work

    def _fill(self, work: Workspace, recipe: Recipe) -> None:
        if self.export and recipe == self.export_recipe:
            formats.load_into(work, self.export)
        else:
            work.apply(recipe)
        caches.WORKSPACES.fit(self.owner)


def _key(ref: str, device: str, export_folder: str | None) -> str:
    """What a model's cached results are keyed by: its ref, its device, and the export it holds."""
    return f"{ref}@{device}" + (f"@export:{export_folder}" if export_folder else "")


def shielded(what: str, fn, *args, **kwargs):
    """fn(*args, **kwargs), or None after an error box: a UserError's message, or for anything
    else one line naming what failed (engine.errors.failure, as the command line prints it),
    whose traceback goes to the server's log. Streamlit's own stop and rerun pass through.

    >>> shielded("Building the export", context.export_zip, ctx)   # RuntimeError('disk full')
    # error box: "Building the export failed: RuntimeError: disk full"; returns None
    """
    try:
        return fn(*args, **kwargs)
    except UserError as e:
        st.error(str(e))
    except Exception as e:  # noqa: BLE001 -- the page goes on; the log keeps the traceback
        log.exception("%s failed", what)
        st.error(failure(what, e))
    return None


# ---------------------------------------------------------------------------------------
# Timing marks (server side), read by the latency benchmark, and the start of every run
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


@st.cache_resource(show_spinner=False, max_entries=caches.MODELS)
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


def loaded_explorer(ref: str, device: str) -> Explorer:
    """The model, loaded once per process (shared by every session; never modified)."""
    return _explorer(ref, device)


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
    except Exception as e:  # noqa: BLE001 -- a model the engine cannot handle: say so, keep the page
        log.exception("opening %s failed", ref)
        st.error(failure(f"Opening {ref}", e))
        return None
    stored = Recipe.from_dict(exported["recipe"]) if exported else None
    if stored is not None and recipe == dataclasses.replace(stored, distill_steps=0, distill_lr=DISTILL_LR):
        recipe = stored  # the controls show the export's recipe (distillation is in its values)
    ctx = Context(ref, device, ex, recipe, exported["folder"] if exported else None, _owner(), stored)
    if exported and recipe == stored:
        work, _ = ctx._workspace()
        if work.applied is None or work.applied.export != exported["folder"]:
            with st.spinner(f"Reading the export {exported['folder']} and checking its files…"):
                if shielded(f"Reading the export {exported['folder']}", formats.load_into,
                            work, exported["folder"]) is None:
                    return None
            caches.WORKSPACES.fit(ctx.owner)
    return ctx


class _Owner:
    """A session's name in ui.caches.WORKSPACES: when Streamlit lets the session's state go (the
    session ended), its workspace is released."""

    def __init__(self):
        self.id = uuid.uuid4().hex
        weakref.finalize(self, caches.WORKSPACES.release, self.id)


def _owner() -> str:
    owner = st.session_state.get("_owner")
    if not isinstance(owner, _Owner):
        owner = st.session_state["_owner"] = _Owner()
    return owner.id


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


def page(page_file: str) -> Context:
    """The first call of a page that works on the model: `page_start`, then the context that
    app.py opened; without one (app.py has shown why), the page stops here."""
    page_start(page_file)
    ctx = context()
    if ctx is None:
        st.stop()
    return ctx


def holds_export(ctx: Context) -> bool:
    """Whether the workspace holds the values read from the sidebar's export."""
    held = ctx.work.applied
    return bool(ctx.export) and held is not None and held.export == ctx.export and held.recipe == ctx.recipe
