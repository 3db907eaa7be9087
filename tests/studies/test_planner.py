"""The budget planner: its knapsack against brute force, its options, and a plan that beats uniform on minilm."""
import itertools
import json
import random

import pytest

from engine.errors import UserError
from engine.recipe.recipe import Recipe
from engine.studies import planner as P


def test_knapsack_equals_brute_force_on_random_instances():
    rng = random.Random(0)
    for _ in range(60):
        units = [f"u{i}" for i in range(rng.randint(1, 4))]
        options = {u: list(range(rng.randint(1, 4))) for u in units}
        loss = {(u, o): rng.uniform(-1, 1) for u in units for o in options[u]}
        cost = {(u, o): rng.randint(-50, 50) for u in units for o in options[u]}
        budget = rng.randint(-60, 60)
        fits = [c for c in itertools.product(*(options[u] for u in units))
                if sum(cost[u, o] for u, o in zip(units, c)) <= budget]
        got = P.least_loss(units, options, loss, cost, budget, step=1)
        if not fits:
            assert got is None
            continue
        best = min(sum(loss[u, o] for u, o in zip(units, c)) for c in fits)
        assert sum(cost[u, got[u]] for u in units) <= budget
        assert sum(loss[u, got[u]] for u in units) == pytest.approx(best)
        # at most k units moved from `keep`
        keep, k = {u: options[u][0] for u in units}, rng.randint(0, len(units))
        near = [c for c in fits if sum(o != keep[u] for u, o in zip(units, c)) <= k]
        got = P.least_loss(units, options, loss, cost, budget, step=1, keep=keep, max_changes=k)
        if not near:
            assert got is None
            continue
        assert sum(got[u] != keep[u] for u in units) <= k and sum(cost[u, got[u]] for u in units) <= budget
        assert sum(loss[u, got[u]] for u in units) == pytest.approx(min(sum(loss[u, o] for u, o in zip(units, c))
                                                                         for c in near))


def test_knapsack_rounds_costs_up_so_the_budget_always_holds():
    # steps of 3 bytes: a cost of 5 counts as 6, never less
    units, options = ["a", "b"], {"a": [0, 1], "b": [0, 1]}
    loss = {("a", 0): 0.0, ("a", 1): -1.0, ("b", 0): 0.0, ("b", 1): -0.5}
    cost = {("a", 0): 0, ("a", 1): 5, ("b", 0): 0, ("b", 1): 5}
    assert P.least_loss(units, options, loss, cost, budget=11, step=3) == {"a": 1, "b": 0}
    assert P.least_loss(units, options, loss, cost, budget=12, step=3) == {"a": 1, "b": 1}
    assert P.least_loss(units, options, loss, cost, budget=-1, step=3) is None


def test_candidates_go_from_one_change_to_the_unconstrained_choice():
    units = ["a", "b", "c"]
    options = {u: [0, 1] for u in units}
    loss = {(u, 0): 0.0 for u in units} | {("a", 1): -3.0, ("b", 1): -2.0, ("c", 1): -1.0}
    cost = {(u, o): 0 for u in units for o in (0, 1)}
    found = P.candidates(units, options, loss, cost, 0, {u: 0 for u in units})
    assert found == [{"a": 1, "b": 0, "c": 0}, {"a": 1, "b": 1, "c": 0}, {"a": 1, "b": 1, "c": 1}]


def test_options_parse_and_bad_ones_are_named():
    assert P.parse_option("3/g64").rule == {"bits": 3, "granularity": "group", "group_size": 64}
    assert P.parse_option("2/ch").rule == {"bits": 2, "granularity": "channel"}
    assert P.parse_option("4").rule == {"bits": 4} and P.parse_option("q4_k").rule == {"number_format": "q4_k"}
    assert P.parse_option("reference") is P.REFERENCE
    assert P.parse_option("3/g256+z").rule == {"bits": 3, "granularity": "group", "group_size": 256, "symmetric": False}
    assert P.parse_option("2/CH+Z") == P.Option("2/ch+z", (("bits", 2), ("granularity", "channel"), ("symmetric", False)))
    assert [o.label for o in P.default_ladder(Recipe(bits=3))] == ["2/ch", "3/ch", "3/g64", "3/g32", "4/ch", "4/g128",
                                                                   "3/g128+z", "3/g256+z"]
    assert [o.label for o in P.default_ladder(Recipe(bits=8))] == ["7/ch", "8/ch", "8/g64", "8/g32", "8/g128+z",
                                                                   "8/g256+z"]  # no 9 bits
    assert set(P.default_ladder(Recipe(bits=3))) < set(P.wider_ladder(Recipe(bits=3)))
    assert len(P.wider_ladder(Recipe(bits=2))) == 2 * 2 * 5  # 2 and 3 bits, with and without zero-points, 5 grids
    assert P.default_ladder(Recipe(number_format="q4_k"))[2].label == "q4_k"
    assert P.parse_option("4/g64/s0.5").rule == {"bits": 4, "granularity": "group", "group_size": 64, "sparsity": 0.5}
    assert P.parse_option("4/r0.25+z").rule == {"bits": 4, "rank_ratio": 0.25, "symmetric": False}
    assert P.parse_option("s0.5").rule == {"sparsity": 0.5}  # at the reference's bits
    for bad in ("9", "3/x", "16", "q9_k", "3/g64+y", "+z", "g64", "4/s1.5", "4/s0.5/s0.5", "s0.5/4"):
        with pytest.raises(UserError, match="--ladder"):
            P.parse_option(bad)


def test_the_planning_text_is_text_the_evaluation_never_reads():
    from engine.models import data
    from engine.models.calibrate import wiki_paragraphs

    news, name = P.planning_text("causal-lm")  # a language model is scored on the 300 Lee articles
    assert news.splitlines() == list(data.lee_documents()) and "lee.cor" in name
    assert not set(news.splitlines()) & set(data.lee_background())
    assert P.planning_text("seq2seq")[0] == news
    for kind in ("encoder", "classifier"):  # their evaluation reads lee.cor (similarity) or the polarity sentences
        wiki, name = P.planning_text(kind)
        assert wiki.splitlines() == list(wiki_paragraphs(P.PLAN_PARAGRAPHS)) and "Wikipedia" in name
        assert not set(wiki.splitlines()) & (set(data.lee_documents()) | set(data.polarity()[0]))


def test_rank_and_sparsity_per_unit_where_asked(tiny_models):
    from engine.drivers.explorer import Explorer

    work = Explorer.open(tiny_models["bert"]).workspace()
    result = P.plan(work, Recipe(bits=4), by="type", ladder=P.parse_ladder("4/s0.5,8/r0.5,8/ch"), rounds=1)
    assert result.grid.options == ("reference", "4/s0.5", "8/r0.5", "8/ch")
    assert all(b < 0 for b in (row[1] for row in result.grid.bytes))  # half the values pruned: fewer bytes
    assert result.planned.compressed_bytes <= result.uniform.compressed_bytes
    recipe = Recipe.from_json(json.dumps(result.recipe.to_dict()))
    for u in result.units:  # every layer of a unit carries its option's sparsity, rank and bits
        want = Recipe(bits=4) if u.choice == "reference" else Recipe(bits=4).updated(**P.parse_option(u.choice).rule)
        assert {recipe.for_layer(n) for n in u.layers} == {want}
    assert work.apply(recipe).memory.compressed_bytes == result.planned.compressed_bytes
    # its JSON form: the keys `python -m engine plan --json` prints, plain data throughout
    d = json.loads(json.dumps(result.to_dict()))
    assert list(d) == ["metric", "baseline", "target_ratio", "budget_bytes", "by", "reference", "ladder", "recipe",
                       "is_reference", "units", "grid", "rounds", "rounds_run", "measured_choices", "plan", "uniform"]
    assert d == result.to_dict() and d["grid"]["options"] == list(result.grid.options)
    assert d["units"][0] == {"unit": result.units[0].unit, "layers": list(result.units[0].layers),
                             "choice": result.units[0].choice, "loss_by_option": dict(zip(d["grid"]["options"],
                                                                                           d["grid"]["loss"][0]))}
    assert d["uniform"] == {"recipe": "int4 g128", "compressed_bytes": result.uniform.compressed_bytes,
                            "ratio": result.uniform.ratio, "metrics": result.uniform.metrics}
    assert set(d["plan"]) == {"compressed_bytes", "ratio", "metrics"} and d["reference"] == Recipe(bits=4).to_dict()
    assert list(d["rounds"][0]) == ["round", "changes", "predicted", "measured", "bytes", "choice"]
    assert d["rounds_run"] == 1 and d["measured_choices"] == result.measured_choices


def test_plan_beats_uniform_3_bits_on_minilm_and_is_a_recipe(minilm_explorer):
    work = minilm_explorer.workspace()
    ladder = P.parse_ladder("2/ch,3/g64")
    result = P.plan(work, Recipe(bits=3), by="type", ladder=ladder, rounds=1)
    p, uni = result.planned, result.uniform
    assert p.compressed_bytes <= uni.compressed_bytes == work.apply(Recipe(bits=3)).memory.compressed_bytes
    assert not result.is_reference
    # measured with the full protocol: the plan keeps the embeddings closer than uniform 3 bits
    assert p.metrics["cosine_to_original"] > uni.metrics["cosine_to_original"]
    assert len(result.grid.units) == 7 and result.grid.options == ("reference", "2/ch", "3/g64")
    assert all(row[0] == 0.0 for row in result.grid.loss)  # the reference's own option costs nothing
    # the plan is a recipe: it round-trips through JSON, gives every layer its unit's setting, and
    # applied again (as the app or `run --recipe` would) has the plan's bytes and quality
    recipe = Recipe.from_json(json.dumps(result.to_dict()["recipe"]))
    assert recipe == result.recipe and recipe.to_dict() == result.recipe.to_dict() and recipe.per_layer
    for u in result.units:
        want = Recipe(bits=3) if u.choice == "reference" else Recipe(bits=3).updated(**P.parse_option(u.choice).rule)
        assert {recipe.for_layer(n) for n in u.layers} == {want}
    applied = work.apply(recipe)
    assert applied.memory.compressed_bytes == p.compressed_bytes
    from engine.drivers import footprint

    sk = footprint.skeleton_of(minilm_explorer.loaded.model.config, "minilm", "minilm")
    assert footprint.predict(sk, recipe).compressed_bytes == applied.memory.compressed_bytes
    with pytest.raises(UserError, match="cannot be reached"):
        P.plan(work, Recipe(bits=3), target_ratio=0.05, by="type", ladder=ladder, rounds=1)
    with pytest.raises(UserError, match="--ladder: option q4_k does not go with"):
        P.plan(work, Recipe(bits=3, sparsity=0.5), ladder=[P.parse_option("q4_k")])
