"""Results cached for every session: per (model, recipe), per model, and per config.

Keyed by the context's key (model, device, export held) and the recipe's JSON, in a bounded
store shared by all sessions (`store`); a miss makes the session's workspace hold the recipe
(`Workspace.ensure`) and computes.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import streamlit as st

from engine import footprint
from engine.recipe import Recipe

from .context import Context


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


SIDEBAR_MODEL = "the sidebar's model"
CONFIG_REF = "A config.json, model folder or hub id…"


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




def _speed_field(ctx: Context, settings) -> str:
    """The settings, and the runtime dtype 'auto' resolves to on the model's device (engine.machine)."""
    from engine.machine import runtime_dtype

    return f"speed {settings} {runtime_dtype(ctx.explorer.loaded.device, settings.dtype)[0]}"


def speed_known(ctx: Context, settings) -> bool:
    """Whether the current recipe's speed under these settings was measured (by any session)."""
    return store().get((ctx.key, ctx.recipe.to_json()), _speed_field(ctx, settings)) is not None


def speed(ctx: Context, settings, progress=None) -> dict:
    """The speed report of the current recipe (engine.speed), measured once per model, recipe and
    settings for every session."""
    from engine import speed as engine_speed

    return cached(ctx, ctx.recipe, _speed_field(ctx, settings),
                  lambda: engine_speed.measure(ctx.explorer, ctx.recipe, settings, progress))
