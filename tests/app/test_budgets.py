"""Every cache bounded by its budget, the least recently used evicted first: exact counts, worked
out by hand, no browser and no timing (the budgets: engine/drivers/explorer.py for the explorer's caches,
ui/caches.py for the app's)."""
import gc
import sys
import threading
import time
import types

import pytest
import torch

from engine.drivers import explorer as session
from engine.drivers.explorer import Explorer, svd_bytes
from engine.lru import LRU, nbytes
from engine.recipe.recipe import Recipe
from ui import caches, context, results

# the tiny BERT's 13 compressible layers: per block q, k, v, o (32 x 32), intermediate (64 x 32)
# and output (32 x 64), then the pooler (32 x 32): 17,408 weights
PARAMS = 2 * (4 * 32 * 32 + 2 * 64 * 32) + 32 * 32
SQUARE_SVD = (32 * 32 + 32 + 32 * 32) * 4  # U, S, V^T in fp32: 8,320 bytes


def test_lru_keeps_its_entries_and_evicts_the_least_recently_used():
    c = LRU("t", max_entries=2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # "a" is now the most recent
    c.put("c", 3)
    assert c.keys() == ["a", "c"] and c.evicted == 1 and c.get("b") is None
    assert c.get_or_put("b", lambda: 4) == 4 and c.keys() == ["c", "b"] and c.evicted == 2


def test_lru_measures_tensors_and_keeps_its_bytes():
    c = LRU("t", max_bytes=1000)
    for k in range(3):  # 100 float32 values: 400 bytes each
        c.put(k, torch.zeros(100))
    assert c.keys() == [1, 2] and c.bytes == 800 and c.evicted == 1
    assert c.room(200) and not c.room(201)
    big = torch.zeros(300)  # 1,200 bytes, over the whole budget: returned, not kept
    assert c.put("big", big) is big and "big" not in c and c.keys() == [1, 2]
    c.put(3, torch.zeros(100, dtype=torch.float16))  # 200 bytes: fits beside the two
    assert c.keys() == [1, 2, 3] and c.bytes == 1000
    c.pop(1)
    assert c.bytes == 600 and len(c) == 2


def test_nbytes_counts_each_tensor_once():
    t = torch.zeros(10, dtype=torch.float16)
    assert nbytes(t) == 20
    assert nbytes([t, t]) == 20 + sys.getsizeof([t, t])
    assert nbytes({"t": t}) == sys.getsizeof({"t": t}) + sys.getsizeof("t") + 20


@pytest.fixture
def bert(tiny_models):
    return tiny_models["bert"]


def test_the_explorers_caches_stop_at_their_budgets_and_results_do_not_change(bert, monkeypatch):
    monkeypatch.setattr(session, "FACTORS_BYTES", 3 * SQUARE_SVD + 100)  # room for 3 square layers' SVDs
    monkeypatch.setattr(session, "MAGNITUDES_BYTES", 5 * 4096)  # room for 5 square layers' |W| (4,096 B)
    ex = Explorer.open(bert, device="cpu")
    ex.prepare_in_background(factorize=True).join()
    names = [i.name for i in ex.selected(Recipe())]
    assert svd_bytes(ex.layer(names[0])) == SQUARE_SVD
    # in layer order: q, k, v, o (16,384 bytes), then the intermediate's 8,192 would pass 20,480
    assert ex._sorted_abs.keys() == names[:4] and ex._sorted_abs.bytes == 4 * 4096
    assert ex._svd.keys() == names[:3] and ex._svd.bytes == 3 * SQUARE_SVD
    assert ex.factorized()  # as many as the budget holds
    assert ex.sorted_abs(names[4]) is None  # no room: the caller selects instead

    recipe = Recipe(rank_ratio=0.5, bits=8, group_size=32, sparsity=0.5, group="attention")
    bounded = ex.workspace()
    bounded.apply(recipe)  # the 8 attention layers' SVDs, in order: o0, q1, k1, v1, o1 each evict one
    attention = [n for n in names if ".attention." in n]
    assert len(attention) == 8 and ex._svd.keys() == attention[-3:] and ex._svd.evicted == 5
    monkeypatch.setattr(session, "FACTORS_BYTES", 10**9)
    monkeypatch.setattr(session, "MAGNITUDES_BYTES", 10**9)
    free = Explorer.open(bert, device="cpu").workspace()
    # what was evicted or never kept is computed again: the same values (pruning thresholds found
    # by selection where the magnitudes are not held)
    for r in (recipe, Recipe(bits=8, group_size=32, sparsity=0.5)):
        bounded.apply(r)
        free.apply(r)
        for name in bounded.stored:
            assert all(torch.equal(a, b) for a, b in zip(bounded.stored[name].tensors(), free.stored[name].tensors()))


def test_evaluators_keep_the_two_texts_asked_for_last(bert, monkeypatch):
    made = []
    monkeypatch.setattr(session, "make_evaluator", lambda loaded, text, name: made.append(text) or types.SimpleNamespace())
    ex = Explorer.open(bert, device="cpu")
    first = ex.evaluator()
    ex.evaluator("two", "two")
    assert ex.evaluator() is first and made == [None, "two"]
    ex.evaluator("three", "three")  # evicts "two", the least recently asked for
    assert ex._evaluators.keys() == [(None, None), ("three", "three")]
    ex.evaluator("two", "two")  # made again
    assert made == [None, "two", "three", "two"] and ex._evaluators.evicted == 2


def test_fp16_copies_live_as_long_as_a_workspace_holds_them(bert):
    ex = Explorer.open(bert, device="cpu")
    work = ex.workspace()
    work.apply(Recipe(bits=4, group_size=32, group="attention"))  # the MLP and the pooler left at fp16
    assert len(ex._fp16) > 0
    del work
    gc.collect()
    assert len(ex._fp16) == 0


def test_a_workspace_counts_the_bytes_it_holds_of_its_own(bert):
    ex = Explorer.open(bert, device="cpu")
    work = ex.workspace()
    assert work.held_bytes == 0
    work.apply(Recipe(bits=4, group_size=32))
    # fp32 values (4 bytes a weight), a scale and a zero-point in fp32 per 32 weights; the values
    # before quantization are the original's (shared)
    assert work.held_bytes == 4 * PARAMS + 8 * PARAMS // 32
    work.apply(Recipe(bits=8, group_size=32, sparsity=0.5))
    # pruned: the values before quantization are its own (4 bytes), and the mask (1 byte)
    assert work.held_bytes == (4 + 4 + 1) * PARAMS + 8 * PARAMS // 32
    work.apply(Recipe())  # all at 16 bits: the explorer's shared fp16 copies
    assert work.held_bytes == 0


class Held:
    def __init__(self, nbytes=0):
        self.held_bytes = nbytes


def test_the_workspace_pool_keeps_its_budget_and_releases_idle_and_ended_sessions():
    now = [0.0]
    pool = caches.WorkspacePool(max_bytes=100, idle_s=600, clock=lambda: now[0])
    a, fresh = pool.get("A", "m", lambda: Held(60))
    assert fresh and pool.get("A", "m", lambda: Held())[0] is a  # the same one, not made again
    pool.get("B", "m", lambda: Held(30))
    c, _ = pool.get("C", "m", Held)  # made empty: 90 bytes in all, nothing evicted
    assert pool.owners() == ["A", "B", "C"] and pool.released == 0
    c.held_bytes = 50  # C applied a recipe: 140 bytes
    pool.fit(keep="C")
    assert pool.owners() == ["B", "C"] and pool.bytes == 80 and pool.released == 1  # A, least recently used
    big, _ = pool.get("D", "m", lambda: Held(150))  # alone over the budget: kept while it is the one asking
    assert pool.owners() == ["D"] and pool.released == 3
    pool.get("B", "m", lambda: Held(10))  # B was released: made again
    assert pool.owners() == ["B"] and pool.released == 4
    now[0] = 500
    pool.get("E", "m", lambda: Held(10))
    now[0] = 1100.5  # B unused for 1,100.5 s, E for 600.5 s: both idle
    pool.get("F", "m", Held)
    assert pool.owners() == ["F"] and pool.released == 6
    work, fresh = pool.get("F", "other model", Held)  # the session changed model: a new workspace
    assert fresh and pool.owners() == ["F"]
    pool.release("F")  # its session ended
    assert pool.owners() == [] and pool.released == 7


def test_a_session_whose_state_is_dropped_releases_its_workspace(monkeypatch):
    pool = caches.WorkspacePool()
    monkeypatch.setattr(caches, "WORKSPACES", pool)
    owner = context._Owner()
    pool.get(owner.id, "m", Held)
    assert pool.owners() == [owner.id]
    del owner
    gc.collect()
    assert pool.owners() == [] and pool.released == 1


def test_a_released_workspace_is_made_again_holding_the_sessions_recipe(bert, monkeypatch):
    pool = caches.WorkspacePool()
    monkeypatch.setattr(caches, "WORKSPACES", pool)
    ex = Explorer.open(bert, device="cpu")
    recipe = Recipe(bits=4, group_size=32, sparsity=0.25)
    ctx = context.Context("bert", "cpu", ex, recipe, owner="session")
    first = ctx.work  # made now: it takes the session's recipe at once
    assert first.applied.recipe == recipe and ctx.work is first
    before = first.report()
    pool.release("session")
    again = ctx.work
    assert again is not first and again.applied.recipe == recipe and again.report()["layers"] == before["layers"]
    other = Recipe(bits=8, group_size=32)
    assert ctx.holding(other) is again and again.applied.recipe == other
    pool.release("session")
    assert ctx.holding(other).applied.recipe == other  # made again with the recipe asked for


def test_results_keep_their_bytes_and_entries():
    key = ("m@cpu", "{recipe}")
    one = nbytes(((key, "field 1"), {"cosine": 0.5}))  # each result measured with its key
    store = results.ResultStore(max_bytes=2 * one + one // 2, max_entries=10)
    for field in ("field 1", "field 2", "field 3"):  # three results of the same size: two fit
        store.put(key, field, {"cosine": 0.5})
    assert store.get(key, "field 1") is None and store.get(key, "field 2") == {"cosine": 0.5}
    assert len(store.lru) == 2 and store.lru.bytes == 2 * one
    few = results.ResultStore(max_bytes=10**6, max_entries=2)
    for k in range(5):
        few.put((k,), "memory", k)
    assert few.lru.keys() == [((3,), "memory"), ((4,), "memory")] and few.lru.evicted == 3


def test_per_session_state_keeps_its_entries(monkeypatch):
    sweeps = caches.Bounded(2)
    for model in ("a", "b", "a", "c"):
        sweeps[model] = {"rows": []}
    assert list(sweeps) == ["a", "c"]
    fake = types.SimpleNamespace(session_state={})
    monkeypatch.setattr(caches, "st", fake)
    caches.keep_built("export_zip", ("zip",))
    caches.keep_built("explore_gguf_made", ("gguf",))  # one built file per session: the zip dropped
    assert "export_zip" not in fake.session_state and fake.session_state["explore_gguf_made"] == ("gguf",)
    assert caches.session_map("plans", 3) is caches.session_map("plans", 3)


def test_at_most_two_sessions_compute_at_once_and_one_that_waited_finds_the_result(monkeypatch):
    monkeypatch.setattr(caches, "SLOTS", threading.BoundedSemaphore(caches.COMPUTATIONS))
    running, most, calls, lock = [0], [0], [], threading.Lock()
    release = {}  # recipe's bits -> the event its computation waits for

    def compute(work):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls.append(work)
        release[work].wait()
        with lock:
            running[0] -= 1
        return {"bits": work}

    def ask(bits: int) -> threading.Thread:
        ctx = types.SimpleNamespace(key=f"budget-test@{id(release)}", holding=lambda recipe: recipe.bits)
        release.setdefault(bits, threading.Event())
        t = threading.Thread(target=results.cached, args=(ctx, Recipe(bits=bits), "quick", compute))
        t.start()
        return t

    def until(n: int):
        while running[0] < n:
            time.sleep(0.01)

    first, second = ask(2), ask(3)
    until(2)
    waiting = [ask(4), ask(5), ask(2)]  # no slot free: they wait, the last for what the first computes
    assert calls == [2, 3]
    release[2].set()
    first.join()  # its slot goes to one of the three; the bits=2 result is stored
    release[4].set()
    release[5].set()
    for t in waiting:
        t.join()
    release[3].set()
    second.join()
    assert most[0] == caches.COMPUTATIONS == 2 and sorted(calls) == [2, 3, 4, 5]  # bits=2 computed once
