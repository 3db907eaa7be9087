import json

import pytest

from engine.recipe.recipe import Recipe, RecipeError

ALL_OPTIONS = [
    Recipe(),
    Recipe(rank=64),
    Recipe(rank_ratio=0.25),
    Recipe(rank_ratio=1.0),
    *[Recipe(bits=b) for b in (2, 3, 4, 5, 6, 7, 8, 16)],
    Recipe(bits=4, granularity="tensor"),
    Recipe(bits=4, granularity="channel"),
    Recipe(bits=3, group_size=32, symmetric=False),
    Recipe(sparsity=0.5),
    Recipe(pattern="2:4"),
    Recipe(pattern="1:8", bits=8),
    Recipe(include_embeddings=True),
    Recipe(layers=r"\.mlp\."),
    Recipe(group="attention"),
    Recipe(group="mlp", layers="layers\\.0\\."),
    Recipe(rank_ratio=0.5, bits=4, group_size=64, symmetric=False, sparsity=0.3, include_embeddings=True, layers="q_proj"),
    Recipe(bits=3, sparsity=0.5, distill_steps=20, distill_lr=3e-5),
    Recipe(bits=4, per_layer=[{"match": r"\.down_proj$", "bits": 6, "group_size": 64},
                              {"match": "q_proj", "rank_ratio": 0.5, "pattern": "2:4"}]),
    *[Recipe(number_format=f) for f in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k",
                                         "q6_k")],
    Recipe(number_format="q4_0", quant_method="gptq"),
    Recipe(prune_heads=0.25, prune_channels=0.5, prune_blocks=2, structure_importance="magnitude"),
    Recipe(remove_blocks="3,5", bits=4, per_layer=[{"match": r"layers\.0\.", "prune_heads": 0.5}]),
    Recipe(number_format="q4_k", quant_method="imatrix", include_embeddings=True,
           per_layer=[{"match": "v_proj", "number_format": "q6_k"}, {"match": "position", "bits": 16}]),
]


@pytest.mark.parametrize("recipe", ALL_OPTIONS, ids=lambda r: r.describe())
def test_json_round_trip(recipe):
    text = recipe.to_json()
    assert Recipe.from_json(text) == recipe
    assert json.loads(text) == recipe.to_dict()


def test_pattern_sets_sparsity():
    assert Recipe(pattern="2:4").sparsity == 0.5
    assert Recipe(pattern="2:8").sparsity == 0.75
    assert Recipe(pattern="2:4", sparsity=0.5).nm == (2, 4)


@pytest.mark.parametrize("kwargs, field", [
    ({"rank": 0}, "rank"),
    ({"rank": 2.5}, "rank"),
    ({"rank": 4, "rank_ratio": 0.5}, "rank"),
    ({"rank_ratio": 0}, "rank_ratio"),
    ({"rank_ratio": 1.5}, "rank_ratio"),
    ({"bits": 1}, "bits"),
    ({"bits": 9}, "bits"),
    ({"bits": True}, "bits"),
    ({"granularity": "row"}, "granularity"),
    ({"group_size": 0}, "group_size"),
    ({"sparsity": 1}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"sparsity": float("nan")}, "sparsity"),
    ({"pattern": "4:2"}, "pattern"),
    ({"pattern": "half"}, "pattern"),
    ({"pattern": "2:4", "sparsity": 0.3}, "sparsity"),
    ({"symmetric": "yes"}, "symmetric"),
    ({"layers": "("}, "layers"),
    ({"group": "ffn"}, "group"),
    ({"prune_heads": 1.0}, "prune_heads"),
    ({"prune_channels": -0.1}, "prune_channels"),
    ({"prune_blocks": -1}, "prune_blocks"),
    ({"remove_blocks": "3;4"}, "remove_blocks"),
    ({"remove_blocks": "3", "prune_blocks": 1}, "remove_blocks"),
    ({"structure_importance": "random"}, "structure_importance"),
    ({"distill_steps": -1}, "distill_steps"),
    ({"distill_steps": 2.0}, "distill_steps"),
    ({"distill_lr": 0}, "distill_lr"),
    ({"distill_lr": 2.0}, "distill_lr"),
    ({"per_layer": {"match": "x"}}, "per_layer"),
    ({"per_layer": [{"bits": 4}]}, r"per_layer\[0\] match"),
    ({"per_layer": [{"match": "(", "bits": 4}]}, r"per_layer\[0\] match"),
    ({"per_layer": [{"match": "x"}]}, r"per_layer\[0\]"),
    ({"per_layer": [{"match": "x", "group": "mlp"}]}, r"per_layer\[0\]"),
    ({"per_layer": [{"match": "x", "bits": 4}, {"match": "y", "bits": 9}]}, r"per_layer\[1\] \(y\): bits"),
    ({"per_layer": [{"match": "x", "act_order": True}]}, r"per_layer\[0\] \(x\): act_order"),
])
def test_bad_values_name_the_field(kwargs, field):
    with pytest.raises(RecipeError, match=rf"^{field}:"):
        Recipe(**kwargs)


def test_from_json_rejects_non_recipes():
    with pytest.raises(RecipeError, match="unknown field"):
        Recipe.from_dict({"bits": 4, "colour": "red"})
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_json("bits: 4")
    with pytest.raises(RecipeError, match="JSON object"):
        Recipe.from_json("[4]")


def test_rank_resolution():
    assert Recipe(rank_ratio=0.5).rank_for(384) == 192
    assert Recipe(rank_ratio=0.001).rank_for(384) == 1
    assert Recipe(rank_ratio=1.0).rank_for(384) is None  # full rank: the layer stays dense
    assert Recipe(rank=400).rank_for(384) is None
    assert Recipe(rank=100).rank_for(384) == 100
    assert Recipe().rank_for(384) is None


def test_per_layer_rules_first_match_wins_and_fill_in_from_the_recipe():
    r = Recipe(rank=64, bits=4, group_size=64, quant_method="gptq", act_order=True, per_layer=[
        {"match": r"\.mlp\.", "bits": 8},
        {"match": "down_proj", "bits": 2},  # never reached for an mlp down_proj: the first rule matched
        {"match": "q_proj", "rank_ratio": 0.5, "pattern": "2:4", "quant_method": "rtn"},
    ])
    down = r.for_layer("model.layers.0.mlp.down_proj")
    assert (down.bits, down.group_size, down.rank, down.act_order, down.per_layer) == (8, 64, 64, True, ())
    q = r.for_layer("model.layers.0.self_attn.q_proj")
    # a rank ratio clears the rank, a pattern sets the sparsity, rtn turns act-order off
    assert (q.rank, q.rank_ratio, q.sparsity, q.quant_method, q.act_order) == (None, 0.5, 0.5, "rtn", False)
    assert r.for_layer("model.layers.0.self_attn.k_proj") == r.base()
    assert r.calibrated and not Recipe(per_layer=[{"match": "x", "bits": 4}]).calibrated
    assert Recipe(per_layer=[{"match": "x", "quant_method": "gptq", "bits": 4}]).calibrated
    assert r.describe() == "rank 64 · int4 g64 GPTQ act-order · 3 per-layer rules"


def test_every_field_is_declared_once_with_its_command_line_and_url_names():
    fields = Recipe.fields()
    assert list(fields) == list(Recipe().to_dict())
    urls = [f.url for f in fields.values() if f.url]
    assert len(urls) == len(set(urls))
    assert {n for n, f in fields.items() if f.per_layer} == {
        "rank", "rank_ratio", "bits", "granularity", "group_size", "symmetric", "sparsity", "pattern",
        "lowrank_method", "prune_method", "quant_method", "act_order", "number_format", "double_quant",
        "prune_heads", "prune_channels"}
