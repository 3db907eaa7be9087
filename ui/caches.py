"""Every cache the app keeps, per process and per session: its budget, and what it evicts.

One server process serves every browser session, and may run for days: each cache below is
bounded, and evicts the least recently used first. Whatever is evicted is computed again when
next asked for; a session's recipe lives in its widgets and its link, never only in a cache.

    cache                              where                        budget
    loaded models (engine Explorer)    context._explorer            MODELS: 2 models
    the explorer's own caches          engine/drivers/explorer.py            per model: FACTORS_BYTES 768 MiB,
      (SVDs, magnitudes, evaluators)                                  MAGNITUDES_BYTES 512 MiB, EVALUATORS 2
    each session's workspace           WORKSPACES (here)            WORKSPACE_BYTES: 512 MiB in all; one
                                                                      unused for WORKSPACE_IDLE_S (600 s)
                                                                      is released, so is one whose
                                                                      session ended
    results per (model, recipe):       results.store()              RESULT_BYTES 64 MiB and
      memory, quality, compare,                                       RESULT_ENTRIES 4,096 results
      distillation, speed reports
    config skeletons (Will it fit?)    results._skeleton            SKELETONS: 16
    fit answers                        results.fit                  FIT_ENTRIES 256, for FIT_TTL_S 60 s
    per session: sweeps, plans         st.session_state             SESSION_SWEEPS 4, SESSION_PLANS 8
    per session: files built           st.session_state             BUILT_FILES: 1 (the latest)
    the engine's small caches          engine/recipe/recipe.py             4,096 per-layer recipes
                                       engine/storage/gguf_file.py  4 parsed GGUF files
                                       engine/models/data.py, calibrate    one per packaged text

What a session computes (a recipe applied with its memory report, an evaluation, a comparison,
a speed report, a distillation: every miss of the results) takes one of COMPUTATIONS slots (2)
while it runs; the others wait their turn. A computation in flight holds a workspace and its
working memory, at most COMPUTE_BYTES (1.5 GiB) for the shipped models (smollm2 at 4 bits, 50%
sparse: a 0.9 GiB workspace and, from their shapes, about 0.4 GiB of logits and
log-probabilities). So however many sessions ask at once, the server holds at most: the models
with the explorer's budgets, plus WORKSPACE_BYTES, RESULT_BYTES and COMPUTATIONS x
COMPUTE_BYTES. The planner, the exports and a layer's lesson, rarely asked for, run outside the
slots.

A workspace (engine.drivers.workspace) holds only what its recipe changes; the model, its fp16 copies
and every cache above are shared by all sessions. A workspace released (over the budget, idle,
or its session gone) is made again when its session next needs it, and first takes that
session's recipe (ui.context.Context.work). The bytes of a workspace are measured after each
apply (`Workspace.held_bytes`: numel * element_size of the tensors it holds of its own).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import streamlit as st

MIB = 2**20
MODELS = 2
WORKSPACE_BYTES = 512 * MIB  # one at 4 bits, 50% sparse: smollm2 918 MiB, minilm 93 MiB
COMPUTATIONS, COMPUTE_BYTES = 2, 1536 * MIB
WORKSPACE_IDLE_S = 600
RESULT_BYTES = 64 * MIB  # a memory report: smollm2 (212 layers) 0.22 MiB, minilm 0.04 MiB
RESULT_ENTRIES = 4096
SKELETONS = 16
FIT_ENTRIES, FIT_TTL_S = 256, 60
SESSION_SWEEPS = 4
SESSION_PLANS = 8
BUILT_FILES = 1


class WorkspacePool:
    """Each session's workspace (owner -> workspace of one model key), within `max_bytes` in all
    (each workspace's `held_bytes`) and `idle_s` seconds unused. `get` makes the asking owner's
    workspace the most recently used and then evicts: first those unused for `idle_s`, then the
    least recently used until the rest fit; never the asking owner's, which alone may exceed the
    budget. A workspace evicted while a page is still computing with it lives on until it is done.

    >>> pool = WorkspacePool(max_bytes=100, idle_s=600)
    >>> work, fresh = pool.get("session A", "minilm@cpu", explorer.workspace)   # fresh: True
    """

    def __init__(self, max_bytes: int = WORKSPACE_BYTES, idle_s: float = WORKSPACE_IDLE_S,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes, self.idle_s, self.clock = max_bytes, idle_s, clock
        self._held: OrderedDict = OrderedDict()  # owner -> (key, workspace, last used), least recent first
        self.released = 0
        self._lock = threading.Lock()

    def get(self, owner: str, key: str, make: Callable):
        """(the owner's workspace for model `key`, whether it was made now by `make()`): one of
        another key (the session changed model) is replaced."""
        with self._lock:
            held = self._held.get(owner)
        fresh = held is None or held[0] != key
        work = make() if fresh else held[1]  # a session asks from one thread at a time
        with self._lock:
            self._held.pop(owner, None)
            self._held[owner] = (key, work, self.clock())
            self._fit(owner)
        return work, fresh

    def fit(self, keep: str | None = None) -> None:
        """Evict what is idle or over the budget (after a workspace grew); never `keep`'s."""
        with self._lock:
            self._fit(keep)

    def _fit(self, keep: str | None) -> None:
        now = self.clock()
        for owner, (_, _, used) in list(self._held.items()):
            if owner != keep and now - used > self.idle_s:
                self._drop(owner)
        for owner in list(self._held):
            if self._bytes() <= self.max_bytes:
                break
            if owner != keep:
                self._drop(owner)

    def _drop(self, owner: str) -> None:
        del self._held[owner]
        self.released += 1

    def _bytes(self) -> int:
        return sum(work.held_bytes for _, work, _ in self._held.values())

    def release(self, owner: str) -> None:
        """Drop the owner's workspace (its session ended)."""
        with self._lock:
            if owner in self._held:
                self._drop(owner)

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes()

    def owners(self) -> list[str]:
        with self._lock:
            return list(self._held)


WORKSPACES = WorkspacePool()
SLOTS = threading.BoundedSemaphore(COMPUTATIONS)  # `with SLOTS:` around a computation on a workspace


class Bounded(OrderedDict):
    """A dict of at most `entries` items: setting one beyond drops the least recently set."""

    def __init__(self, entries: int):
        super().__init__()
        self.entries = entries

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.entries:
            self.popitem(last=False)


def session_map(name: str, entries: int) -> Bounded:
    """This session's bounded dict `name` in st.session_state (made on first use)."""
    held = st.session_state.get(name)
    if not isinstance(held, Bounded):
        held = st.session_state[name] = Bounded(entries)
    return held


def keep_built(state: str, made) -> None:
    """Keep a file built for download under `state` in st.session_state; the session's earlier
    built files beyond BUILT_FILES are dropped (built again on request)."""
    order = [s for s in st.session_state.get("_built", []) if s != state] + [state]
    st.session_state[state] = made
    for old in order[:-BUILT_FILES]:
        st.session_state.pop(old, None)
    st.session_state["_built"] = order[-BUILT_FILES:]
