"""The app's llama.cpp formats: the number-format control, the layout notes, the mixes in one click."""
import pytest

from app_harness import compressed_bytes, ok, recipe_caption, start
from engine.drivers.footprint import open_skeleton, predict
from engine.glossary import METRIC_NAMES as NAMES
from engine.recipe.presets import preset_recipe


def _captions(at) -> str:
    return " ".join(c.value for c in at.sidebar.caption)


def test_number_format_sets_its_own_grid_and_says_what_it_is():
    at = ok(start(bits=4))
    int4 = compressed_bytes(at)
    at.selectbox(key="ctl_format").set_value("q4_0")
    ok(at.run())
    assert recipe_caption(at) == "Q4_0"
    assert at.query_params["format"] == "q4_0"
    bits, group = at.select_slider(key="ctl_bits"), at.selectbox(key="ctl_group")
    assert (bits.value, group.value, bits.disabled, group.disabled) == (4, 32, True, True)
    assert compressed_bytes(at) > int4  # a scale per 32 values instead of 128
    assert "llama.cpp's Q4_0: 4.5 bits per value" in _captions(at)
    at.selectbox(key="ctl_format").set_value("int")
    ok(at.run())
    assert recipe_caption(at) == "int4 g32"  # the explorer's own grid with the same bytes: said so
    assert "This is llama.cpp's Q4_0 layout (the same bytes), not its values" in _captions(at)


def test_a_format_with_pruning_is_an_error_box():
    at = start(format="q4_k", sparsity=0.5)
    assert any("stores every value of a full matrix" in e.value for e in at.sidebar.error)


def test_llama_cpp_mix_in_one_click(tiny_models):
    at = ok(start(model=tiny_models["llama"]))
    at.selectbox(key="ctl_preset").set_value("q4_k_m")
    ok(at.run())
    assert recipe_caption(at) == "Q4_K · with embeddings · 2 per-layer rules"  # block 1's V and down in q6_k, the head q8_0
    assert at.selectbox(key="ctl_preset").value == ""  # back to its prompt
    sk = open_skeleton(tiny_models["llama"])
    predicted = predict(sk, preset_recipe("q4_k_m", sk.layers, sk.config)).compressed_bytes
    assert compressed_bytes(at) == pytest.approx(predicted, abs=0.005 * 2**20)  # shown in MiB to 2 decimals
    assert {"Perplexity", "KL divergence to the original", "Top-1 agreement with the original"} <= {
        m.label for m in at.metric}


def test_tradeoffs_draws_llama_cpps_mixes_quality_against_bytes(tiny_models):
    import json

    at = ok(start("pages/tradeoffs.py", model=tiny_models["llama"]))  # tiny: every mix quickly
    at.multiselect(key="tradeoffs_bits").set_value([16])
    at.multiselect(key="tradeoffs_ratios").set_value([1.0])
    at.multiselect(key="tradeoffs_sparsity").set_value([0.0])
    at.multiselect(key="tradeoffs_methods").set_value(["llama.cpp's mixes (Q8_0 … Q2_K)"])
    next(b for b in at.button if b.label == "Run sweep").click()
    ok(at.run())
    table = at.dataframe[0].value
    assert list(table["label"].str.split(" ").str[0]) == ["Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q3_K", "Q2_K"]
    assert table["compressed_bytes"].is_monotonic_decreasing  # no mix larger than the one before
    kl = table[NAMES["kl_to_original"]]  # the metric under its name
    assert kl.iloc[0] < kl.iloc[-1]  # and Q2_K the furthest off
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    points = next(t for t in spec["data"] if t["name"] == "sweep points")
    assert len(points["x"]) == 6 and "Pareto frontier" in [t["name"] for t in spec["data"]]


def test_explore_offers_a_gguf_file_where_the_model_can_have_one(tiny_llama_with_smollm2s_tokenizer):
    at = ok(start(bits=4))  # minilm: a BERT, not the Llama family
    assert any("Not for this model: the Llama family only" in c.value for c in at.caption)
    # a Llama with SmolLM2's tokenizer, small enough to build both files in a few seconds
    # (tests/storage/test_ship.py builds smollm2's own and runs them in transformers and llama.cpp)
    at = ok(start(model=str(tiny_llama_with_smollm2s_tokenizer), bits=4, group=32, layers="attention"))
    assert any("8 of 8 compressed layers go in as they are (8 q4_0)" in c.value for c in at.caption)  # GGUF
    assert any("8 of 8 compressed layers go in as they are (8 int4 group)" in c.value for c in at.caption)
    next(b for b in at.button if b.label == "Build the GGUF file").click()
    ok(at.run())
    name = tiny_llama_with_smollm2s_tokenizer.name
    assert any(d.label.startswith(f"Download {name}-int4-g32") and ".gguf" in d.label
               for d in at.get("download_button"))
    next(b for b in at.button if b.label == "Build the compressed-tensors folder").click()
    ok(at.run())
    assert any("compressed-tensors.zip" in d.label for d in at.get("download_button"))


def test_the_model_picker_takes_a_compressed_tensors_folder(tiny_models, tmp_path):
    from cli_harness import main

    folder = tmp_path / "ct"
    code, _, err = main("export", tiny_models["llama"], "--bits", "4", "--group-size", "32", "--format",
                        "compressed-tensors", "--out", str(folder))
    assert code == 0, err
    in_memory = ok(start(model=tiny_models["llama"], bits=4, group=32))
    at = ok(start(model=str(folder)))  # the source model loads, with the folder's values and recipe
    assert recipe_caption(at) == "int4 g32"
    assert compressed_bytes(at) == compressed_bytes(in_memory)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Perplexity"] == {m.label: m.value for m in in_memory.metric}["Perplexity"]
