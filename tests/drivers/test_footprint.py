"""Memory planning from a config alone: counts equal the loaded model's, byte for byte."""
import json
import math

import pytest

from engine.cli import main
from engine.drivers import footprint
from engine.errors import UserError
from engine.recipe.recipe import Recipe

# the parameter counts the models' publishers state (model cards and papers), against which the
# shipped configs are checked: a wrong field in a config changes its count
PUBLISHED = {
    "gpt2": 124_439_808, "gpt2-medium": 354_823_168, "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200,
    "llama-3-8b": 8_030_261_248, "llama-3-70b": 70_553_706_496, "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512, "mixtral-8x7b": 46_702_792_704, "qwen1.5-moe-a2.7b": 14_315_784_192,
}

RECIPES = [
    Recipe(),
    Recipe(bits=4),
    Recipe(rank_ratio=0.5, bits=4, sparsity=0.5),
    Recipe(rank=7, bits=3, granularity="channel", symmetric=False, include_embeddings=True),
    Recipe(bits=3, quant_method="kmeans", pattern="3:7"),  # 384 and 1536 inputs leave shorter last groups
    Recipe(bits=5, group_size=100, sparsity=0.9, group="mlp"),  # CSR wins at 90%
    Recipe(sparsity=0.3, bits=8, layers=r"\.[02]\.attention"),
]


def _layers(report):
    return [{k: v for k, v in layer.items() if k != "energy_kept"} for layer in report.to_dict()["layers"]]


def test_shipped_configs_have_the_published_parameter_counts():
    assert set(footprint.shipped()) == set(PUBLISHED)
    for name, count in PUBLISHED.items():
        assert footprint.open_skeleton(name).total_params == count, name


@pytest.fixture
def minilm(minilm_explorer):
    return minilm_explorer


def test_config_only_equals_loaded_minilm_byte_for_byte(minilm):
    sk = footprint.open_skeleton("minilm")
    assert sk.total_params == minilm.total_params
    assert sk.layers == minilm.layers
    work = minilm.workspace()
    for recipe in RECIPES:
        applied = work.apply(recipe).memory
        predicted = footprint.predict(sk, recipe)
        assert predicted.compressed_bytes == applied.compressed_bytes, recipe.describe()
        assert _layers(predicted) == _layers(applied), recipe.describe()


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert-classifier", "mixtral", "qwen-moe"])
def test_config_only_equals_loaded_tiny_models(tiny_models, tiny_explorers, name):
    ex = tiny_explorers[name]
    sk = footprint.open_skeleton(tiny_models[name])
    assert (sk.total_params, sk.layers, sk.kind) == (ex.total_params, ex.layers, ex.kind)
    recipe = Recipe(rank_ratio=0.5, bits=4, group_size=16, sparsity=0.25, include_embeddings=True)
    assert _layers(footprint.predict(sk, recipe)) == _layers(ex.workspace().apply(recipe).memory)


def test_llama_3_70b_int4_bytes_by_hand():
    """int4 g128, embeddings and head left at fp16: every block matrix (out, in) stores
    out x in / 2 bytes of codes and out x in / 128 fp16 scales."""
    sk = footprint.open_skeleton("llama-3-70b")
    h, kv, inter, layers, vocab = 8192, 1024, 28672, 80, 128256
    mats = [(h, h), (kv, h), (kv, h), (h, h), (inter, h), (inter, h), (h, inter)]
    block = sum(o * i // 2 + 2 * o * math.ceil(i / 128) for o, i in mats)
    untouched = 2 * vocab * h + (2 * layers + 1) * h  # embeddings, head, the norms
    fp = footprint.footprint(sk, Recipe(bits=4), batch=2, tokens=8192)
    assert fp["weights"]["compressed_bytes"] == layers * block + 2 * untouched
    assert fp["weights"]["original_bytes"] == 2 * PUBLISHED["llama-3-70b"]
    assert fp["kv_cache"]["bytes"] == 2 * 80 * 8 * 128 * 2 * 2 * 8192  # 5 GiB
    assert fp["largest_layer"]["params"] == vocab * h


def test_kv_cache_formula_and_encoder(minilm):
    gpt2 = footprint.open_skeleton("gpt2")
    assert footprint.kv_cache(gpt2, 1, 1024)["bytes"] == 2 * 12 * 12 * 64 * 2 * 1024
    assert footprint.kv_cache(gpt2, 4, 1024, 1)["bytes"] == 2 * 12 * 12 * 64 * 4 * 1024  # 8-bit cache
    mistral = footprint.kv_cache(footprint.open_skeleton("mistral-7b"), 1, 8192)
    assert "4096-token sliding window" in mistral["note"]
    assert footprint.kv_cache(footprint.open_skeleton("minilm"), 1, 256)["bytes"] == 0


def test_fitting_picks_the_mildest_recipe_that_fits():
    sk = footprint.open_skeleton("llama-3-8b")
    totals = [footprint.footprint(sk, r)["total_bytes"] for r in footprint.LADDER]
    assert totals == sorted(totals, reverse=True)  # the ladder gets smaller at each step
    devices = [("tiny", totals[-1] - 1), ("just int4", totals[3]), ("huge", totals[0] + 1)]
    rows = footprint.fitting(sk, devices=devices)
    assert [r["recipe"] for r in rows] == [None, footprint.LADDER[3].describe(), "uncompressed"]
    assert rows[1]["headroom_bytes"] == 0


def fit(capsys, *args):
    code = main(["fit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_fit_command(tmp_path, capsys, monkeypatch):
    code, out, err = fit(capsys, "llama-3-70b", "--bits", "4", "--context", "8192", "--json")
    assert code == 0, err
    out = json.loads(out)
    assert out["total_params"] == PUBLISHED["llama-3-70b"] and out["kind"] == "causal-lm"
    assert out["total_bytes"] == out["weights"]["compressed_bytes"] + out["kv_cache"]["bytes"] + out["activations"]["bytes"]
    assert {r["device"].split(" (")[0] for r in out["devices"]} >= {"24 GiB", "80 GiB"}
    small = {r["device"]: r for r in out["small_devices"]}  # 70B at 4 bits (about 35 GiB): no phone, board or laptop
    assert small["Raspberry Pi 5 (8 GB)"]["memory_bytes"] == 8 * 10**9 and not any(r["fits"] for r in small.values())
    assert all(r["total_bytes"] == out["total_bytes"] for r in small.values())
    code, out, err = fit(capsys, "smollm2", "--bits", "4", "--json")
    assert code == 0, err
    small = json.loads(out)["small_devices"]
    assert {r["kind"] for r in small} == {"board", "phone", "laptop"} and all(r["fits"] for r in small)
    code, out, _ = fit(capsys)
    assert code == 0 and "llama-3-70b" in out and "meta-llama/Meta-Llama-3-70B" in out
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama", "hidden_size": "wide"}')
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for args, says in [((str(bad),), "hidden_size"), (("gpt2", "--batch", "0"), "at least 1"),
                       (("no-such-model-here",), "cannot be reached")]:
        code, _, err = fit(capsys, *args)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


def test_unknown_model_type_is_refused(tmp_path):
    cfg = tmp_path / "odd.json"
    cfg.write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(UserError, match="cannot read the config"):
        footprint.open_skeleton(str(cfg))
