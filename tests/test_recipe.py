import json

import pytest

from engine.recipe import Recipe, RecipeError

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
    ({"distill_steps": -1}, "distill_steps"),
    ({"distill_steps": 2.0}, "distill_steps"),
    ({"distill_lr": 0}, "distill_lr"),
    ({"distill_lr": 2.0}, "distill_lr"),
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
