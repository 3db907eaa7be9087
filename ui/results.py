"""Results cached for every session: per (model, recipe), per model, and per config.

Keyed by the context's key (model, device, export held) and the recipe's JSON, in a bounded
store shared by all sessions (`store`, within ui.caches.RESULT_BYTES and RESULT_ENTRIES); a miss
makes the session's workspace hold the recipe (`Context.holding`) and computes on it.
"""
from __future__ import annotations

import streamlit as st

from engine.drivers import footprint
from engine.lru import LRU, nbytes
from engine.recipe.recipe import Recipe

from . import caches
from .context import Context


class ResultStore:
    """Results by (model, recipe) and field ('memory', 'quick', 'full', 'distillation',
    'compare:...', 'speed ...'), within `max_bytes` and `max_entries` (an engine.lru.LRU: the
    least recently used result is evicted first; each measured with its key by lru.nbytes)."""

    def __init__(self, max_bytes: int = caches.RESULT_BYTES, max_entries: int = caches.RESULT_ENTRIES):
        self.lru = LRU("results", max_bytes=max_bytes, max_entries=max_entries)

    def get(self, key: tuple, field: str):
        return self.lru.get((key, field))

    def put(self, key: tuple, field: str, value):
        self.lru.put((key, field), value, size=nbytes(((key, field), value)))


@st.cache_resource(show_spinner=False)
def store() -> ResultStore:
    return ResultStore()


def cached(ctx: Context, recipe: Recipe, field: str, compute):
    """The result `field` of `recipe`, or `compute(work)` on this session's workspace holding it,
    in one of the computation slots (ui.caches.SLOTS; another session may have computed it
    meanwhile)."""
    key = (ctx.key, recipe.to_json())
    value = store().get(key, field)
    if value is None:
        with caches.SLOTS:
            value = store().get(key, field)
            if value is None:
                value = compute(ctx.holding(recipe))
                store().put(key, field, value)
    return value


def memory(ctx: Context, recipe: Recipe | None = None) -> dict:
    """Memory report (engine MemoryReport.to_dict) with each layer's relative error and SQNR."""
    recipe = recipe or ctx.recipe

    return cached(ctx, recipe, "memory", lambda work: work.report())


def quality(ctx: Context, quick: bool, recipe: Recipe | None = None) -> dict:
    recipe = recipe or ctx.recipe
    return cached(ctx, recipe, "quick" if quick else "full", lambda work: work.evaluate(quick=quick))


def quality_if_known(ctx: Context, recipe: Recipe | None = None) -> dict | None:
    return store().get((ctx.key, (recipe or ctx.recipe).to_json()), "full")


def distilled(ctx: Context, steps: int, lr: float, run: bool) -> tuple[Recipe, dict | None]:
    """The current recipe distilled `steps` steps at `lr`, and its result ({'distillation',
    'full', 'memory'}) when known; with `run`, computes it first, with a progress bar."""
    recipe = Recipe.from_dict({**ctx.recipe.to_dict(), "distill_steps": steps, "distill_lr": lr})
    key = (ctx.key, recipe.to_json())
    if run and store().get(key, "distillation") is None:
        bar = st.progress(0.0, text="Distillation")
        with caches.SLOTS:
            work = ctx.holding(ctx.recipe)
            applied = work.distill(steps, lr, progress=lambda k, n, loss: bar.progress(
                k / n, text=f"Distillation: step {k}/{n}, loss {loss:.4f}"))
            bar.empty()
            caches.WORKSPACES.fit(ctx.owner)
            with st.spinner("Scoring the distilled model (full protocol)…"):
                store().put(key, "full", work.evaluate())
                store().put(key, "memory", work.report())
            store().put(key, "distillation", applied.distillation.to_dict())
    if store().get(key, "distillation") is None:
        return recipe, None
    return recipe, {f: store().get(key, f) for f in ("distillation", "full", "memory")}


def scheduled(ctx: Context, steps: int, distill_steps: int, run: bool) -> tuple[Recipe, dict | None]:
    """The current recipe pruned gradually in `steps` steps with `distill_steps` of distillation
    after each (engine.drivers.schedule), and its result ({'steps', 'full', 'memory'}) when known;
    with `run`, computes it first, with a progress bar."""
    from engine.drivers import schedule

    recipe = Recipe.from_dict({**ctx.recipe.to_dict(), "schedule_steps": steps, "distill_steps": distill_steps})
    key = (ctx.key, recipe.to_json())
    if run and store().get(key, "steps") is None:
        bar = st.progress(0.0, text="Gradual schedule")
        with caches.SLOTS:
            done = schedule.run(ctx.explorer, recipe, progress=lambda k, n, what: bar.progress(k / n, text=what))
            bar.empty()
            with st.spinner("Scoring the last step (full protocol)…"):
                store().put(key, "full", done.workspace.evaluate())
                store().put(key, "memory", done.workspace.report())
            store().put(key, "steps", done.steps)
    if store().get(key, "steps") is None:
        return recipe, None
    return recipe, {f: store().get(key, f) for f in ("steps", "full", "memory")}


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


@st.cache_resource(show_spinner="Building the model from its config on the meta device…",
                   max_entries=caches.SKELETONS)
def _skeleton(ref: str) -> footprint.Skeleton:
    return footprint.open_skeleton(ref)


@st.cache_data(show_spinner=False, ttl=caches.FIT_TTL_S, max_entries=caches.FIT_ENTRIES)
def fit(ref: str, recipe: Recipe, batch: int, tokens: int, kv_bits: int) -> tuple[dict, list[dict]]:
    """(footprint of the recipe, per device the mildest ladder recipe that fits); this machine's
    free memory is read again after a minute."""
    sk = _skeleton(ref)
    return (footprint.footprint(sk, recipe, batch, tokens, kv_bits),
            footprint.fitting(sk, batch, tokens, kv_bits))




def _speed_field(ctx: Context, settings) -> str:
    """The settings, and the runtime dtype 'auto' resolves to on the model's device (engine.hardware.machine)."""
    from engine.hardware.machine import runtime_dtype

    return f"speed {settings} {runtime_dtype(ctx.explorer.loaded.device, settings.dtype)[0]}"


def speed_known(ctx: Context, settings) -> bool:
    """Whether the current recipe's speed under these settings was measured (by any session)."""
    return store().get((ctx.key, ctx.recipe.to_json()), _speed_field(ctx, settings)) is not None


def speed(ctx: Context, settings, progress=None) -> dict:
    """The speed report of the current recipe (engine.speed.measure), measured once per model, recipe and
    settings for every session."""
    from engine.speed import measure as engine_speed

    return cached(ctx, ctx.recipe, _speed_field(ctx, settings),
                  lambda work: engine_speed.measure(ctx.explorer, ctx.recipe, settings, progress))


# ---------------------------------------------------------------------------------------
# Compare: candidates ranked against the loaded model (engine.studies.ranking)
# ---------------------------------------------------------------------------------------


def candidate_paths(text: str) -> list[str]:
    """The candidate paths typed one per line (blank lines skipped, each once, in order)."""
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def rank_candidates(ctx: Context, paths: list[str], quick: bool, progress=None) -> dict:
    """The sidebar's recipe and the typed `paths` (export folders, GGUF files, recipe files: each
    checked by the server's allow-list as the sidebar checks a typed model) against the loaded
    model, token by token (engine.studies.ranking.compare's report, its candidates by mean KL);
    `progress(k, n, name)` as the engine calls it. A path refused, unreadable or of another model
    raises a one-line UserError before anything is computed."""
    from engine.studies.ranking import Candidate, check_same_model, compare, read_candidate

    from . import access

    policy = access.for_visitors()
    ex = ctx.explorer
    candidates = [Candidate(f"sidebar: {ctx.recipe.describe()}", "recipe", ctx.recipe)]
    for path in paths:
        cand = read_candidate(policy.check(path), ctx.ref)
        if cand.source is not None and cand.source != ctx.ref:  # the model an export names, as the sidebar does
            policy.check(cand.source, listed_only=False, download=False)
        check_same_model(ex, cand)
        candidates.append(cand)
    with caches.SLOTS:
        return compare(ex, candidates, quick=quick, reference=ctx.ref, progress=progress)
