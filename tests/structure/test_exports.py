"""A smaller model in every file: GGUF with the new head counts, widths and block count (one number
per model where blocks agree, one per block where they differ), loaded by transformers and by
llama.cpp where it is installed; a compressed-tensors folder plain transformers loads; the
explorer's own export; each read back by `run` as the recipe in memory."""
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from cli_harness import main
from engine.drivers.explorer import Explorer
from engine.recipe.recipe import Recipe
from engine.storage import ct_file, gguf_file

UNIFORM = Recipe(number_format="q8_0", prune_heads=0.5, prune_channels=0.25, structure_importance="magnitude")
UNEVEN = Recipe(number_format="q8_0", prune_channels=0.25, structure_importance="magnitude",
                per_layer=[{"match": r"layers\.1\.", "prune_heads": 0.5, "prune_channels": 0.5}])


@pytest.fixture(scope="module")
def tiny(tiny_llama_with_smollm2s_tokenizer):
    """A tiny Llama (hidden 64, 4 query heads in 2 key/value groups, MLP 128, 2 blocks)."""
    return Explorer.open(str(tiny_llama_with_smollm2s_tokenizer), device="cpu")


def _ids(ex):
    return ex.loaded.tokenizer("The capital of France is Paris. The capital of", return_tensors="pt").input_ids


def _fields(path):
    """The file's architecture and its counts."""
    fields = gguf.GGUFReader(path).fields
    arch = fields["general.architecture"].contents()
    return {"arch": arch, **{k: fields[f"{arch}.{k}"].contents() for k in (
        "block_count", "attention.head_count", "attention.head_count_kv", "feed_forward_length",
        "attention.key_length")}}


def test_a_uniformly_smaller_model_as_gguf_loads_in_transformers_with_our_values(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    work = tiny.workspace()
    work.apply(UNIFORM)
    report = gguf_file.write(work, tmp_path)
    assert _fields(report["file"]) == {"arch": "llama", "block_count": 2, "attention.head_count": 2, "attention.head_count_kv": 1,
                                       "feed_forward_length": 96, "attention.key_length": 16}
    assert report["written_bytes"] == report["predicted_bytes"]
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=Path(report["file"]).name, dtype=torch.float32)
    assert hf.model.layers[0].self_attn.q_proj.weight.shape == (32, 64)
    ids = _ids(tiny)
    with torch.inference_mode():
        torch.testing.assert_close(hf(ids).logits, work.model(ids).logits, rtol=0, atol=1e-5)


def test_blocks_that_differ_go_into_gguf_per_block_and_run_reads_them_back(tiny, tmp_path):
    work = tiny.workspace()
    work.apply(UNEVEN)
    report = gguf_file.write(work, tmp_path)
    # llama.cpp's 'deci' architecture: Llama blocks whose counts are given per block
    assert _fields(report["file"]) == {"arch": "deci", "block_count": 2, "attention.head_count": [4, 2],
                                       "attention.head_count_kv": [2, 1], "feed_forward_length": [96, 64],
                                       "attention.key_length": 16}
    back = tiny.workspace()
    gguf_file.load_into(back, report["file"])
    ids = _ids(tiny)
    with torch.inference_mode():
        torch.testing.assert_close(back.model(ids).logits, work.model(ids).logits, rtol=0, atol=1e-5)
    assert back.applied.memory.compressed_bytes == work.applied.memory.compressed_bytes
    assert back.explorer.structure == work.explorer.structure


@pytest.mark.parametrize("recipe", [UNIFORM, UNEVEN], ids=["uniform", "per block"])
def test_llama_cpp_runs_the_smaller_gguf(llama_cpp, tiny, tmp_path, recipe):
    work = tiny.workspace()
    work.apply(recipe)
    report = gguf_file.write(work, tmp_path)
    ids = _ids(tiny)
    llm = llama_cpp.Llama(model_path=report["file"], n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    llm.eval(ids[0].tolist())
    theirs = torch.from_numpy(np.array(llm.scores[: ids.shape[1]]))
    ours = work.model(ids).logits[0].detach()
    assert torch.nn.functional.cosine_similarity(theirs, ours, dim=-1).min() > 0.99


def test_compressed_tensors_holds_a_uniformly_smaller_model_and_refuses_one_whose_blocks_differ(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    work = tiny.workspace()
    work.apply(Recipe(bits=4, group_size=32, prune_heads=0.5, prune_blocks=1, structure_importance="magnitude"))
    ct_file.write(work, tmp_path / "ct")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ct"), dtype=torch.float32)
    assert model.config.num_hidden_layers == 1 and model.config.num_key_value_heads == 1
    ids = _ids(tiny)
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, work.model(ids).logits)
    work.apply(dataclasses_replace(UNEVEN, number_format="int", bits=4, group_size=32))
    with pytest.raises(Exception, match="compressed-tensors: transformers builds a model from one head count"):
        ct_file.write(work, tmp_path / "uneven")


def dataclasses_replace(recipe, **fields):  # a recipe with other fields, as JSON would give it
    return Recipe.from_dict({**recipe.to_dict(), **fields})


def test_run_reads_each_export_of_a_smaller_model_as_the_recipe_in_memory(tiny_llama_with_smollm2s_tokenizer, tmp_path):
    model = str(tiny_llama_with_smollm2s_tokenizer)
    flags = ["--bits", "4", "--group-size", "32", "--prune-heads", "0.5", "--prune-blocks", "1",
             "--structure-importance", "magnitude"]
    code, out, err = main("run", model, *flags, "--quick", "--json")
    assert code == 0, err
    in_memory = json.loads(out)
    assert in_memory["memory"]["structure"]["blocks"] == "1 of 2"
    for fmt in ("explorer", "compressed-tensors"):
        folder = tmp_path / fmt
        code, out, err = main("export", model, *flags, "--format", fmt, "--out", str(folder))
        assert code == 0, err
        code, out, err = main("run", str(folder), "--quick", "--json")
        assert code == 0, err
        back = json.loads(out)
        assert back["metrics"]["perplexity"] == pytest.approx(in_memory["metrics"]["perplexity"], rel=1e-6), fmt
        assert back["memory"]["compressed_bytes"] == in_memory["memory"]["compressed_bytes"]
        assert back["memory"]["structure"] == in_memory["memory"]["structure"]
