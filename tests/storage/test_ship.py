"""The files people ship. --format gguf: a file the gguf package reads, transformers loads with the
explorer's exact values, llama.cpp runs (where the optional llama-cpp-python is installed: skipped,
saying so, where not), in the predicted bytes; `run FILE.gguf` scores it. --format compressed-tensors: a folder plain transformers loads
with the explorer's exact values."""
import collections
from pathlib import Path

import gguf
import pytest
import torch

from cli_harness import main
from engine.formats import ggml
from engine.pipeline.compress import compress
from engine.recipe.recipe import Recipe
from engine.storage import gguf_file


@pytest.mark.parametrize("bits, fmt", [(2, "q4_0"), (3, "q4_0"), (4, "q4_0"), (5, "q5_0"), (6, "q8_0"), (8, "q8_0")])
def test_the_explorers_symmetric_grid_in_groups_of_32_is_a_llama_cpp_type_exactly(bits, fmt):
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(bits))
    stored = compress("x", w, Recipe(bits=bits, group_size=32), factors=None)
    assert gguf_file.tensor_type(stored)[0] == fmt
    raw = gguf_file._int_blocks(stored, fmt)
    assert torch.equal(ggml.dequantize(raw, fmt, 256), stored.matrices[0].values)
    assert (raw.numel() == stored.bytes.compressed_bytes) == (bits in (4, 5, 8))  # the same bytes where layouts agree
    assert ("more bytes" in gguf_file.tensor_type(stored)[1]) == (bits not in (4, 5, 8))  # only with the fallback


def test_layers_gguf_cannot_hold_are_refused_by_name():
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(0))
    for recipe, why in [(Recipe(bits=4), "int4 group128"), (Recipe(rank=4), "low rank"), (Recipe(sparsity=0.5), "pruned"),
                        (Recipe(bits=3, quant_method="kmeans"), "k-means")]:
        stored = compress("x", w, recipe, factors=lambda: torch.linalg.svd(w, full_matrices=False))
        fmt, reason = gguf_file.tensor_type(stored)
        assert fmt is None and why in reason
    code, _, err = main("export", "minilm", "--bits", "4", "--format", "gguf", "--out", "unused")
    assert code == 2 and "the Llama family only" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def q4_k_m_gguf(smollm2_explorer, tmp_path_factory):
    """smollm2 in llama.cpp's Q4_K_M mix, and its GGUF file: (the workspace, the writer's report)."""
    work = smollm2_explorer.workspace()
    work.apply(smollm2_explorer.preset("q4_k_m"))
    return work, gguf_file.write(work, tmp_path_factory.mktemp("q4_k_m"))


def _prompt(ex):
    return ex.loaded.tokenizer("The capital of France is Paris. The capital of Germany is", return_tensors="pt").input_ids


def test_smollm2_q4_k_m_as_gguf_loads_in_transformers(smollm2_explorer, q4_k_m_gguf):
    from transformers import AutoModelForCausalLM

    ex, (work, report) = smollm2_explorer, q4_k_m_gguf
    assert report["written_bytes"] == report["predicted_bytes"] == sum(
        r.bytes.compressed_bytes for r in work.applied.memory.layers if r.compressed and r.info.tied_to is None)
    assert report["fallback_added_bytes"] == 0
    reader = gguf.GGUFReader(report["file"])
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    assert types == {"Q5_0": 166, "F32": 61, "Q4_K": 16, "Q8_0": 15, "Q6_K": 14}  # 272 tensors, as the shipped file
    for t in reader.tensors:
        fmt = t.tensor_type.name.lower()
        if fmt in ggml.TYPES:
            cols, rows = (int(x) for x in t.shape)
            assert t.n_bytes == rows * ggml.TYPES[fmt].row_bytes(cols)
    ids = _prompt(ex)
    file = Path(report["file"])
    hf = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32)
    with torch.inference_mode():
        assert torch.equal(hf(ids).logits, work.model(ids).logits)  # transformers computes with exactly our values


def test_smollm2_q4_k_m_as_gguf_runs_in_llama_cpp(llama_cpp, smollm2_explorer, q4_k_m_gguf):
    import numpy as np

    ex, (work, report) = smollm2_explorer, q4_k_m_gguf
    ids = _prompt(ex)
    llm = llama_cpp.Llama(model_path=report["file"], n_ctx=64, n_threads=2, verbose=False, logits_all=True)
    tokens = ids[0].tolist()
    llm.eval(tokens)
    theirs = torch.from_numpy(np.array(llm.scores[: len(tokens)]))
    ours = work.model(ids).logits[0].detach()
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() >= 0.9  # llama.cpp's own kernels: close, not equal
    assert torch.nn.functional.cosine_similarity(theirs, ours, dim=-1).min() > 0.99
    # perplexity on the explorer's own evaluation windows (256 tokens, BOS first), the first two
    windows = ex.evaluator().windows[:2]
    llm = llama_cpp.Llama(model_path=report["file"], n_ctx=windows.shape[1], n_threads=2, verbose=False,
                          logits_all=True)
    nll = {"llama.cpp": [], "explorer": []}
    for w in windows:
        llm.reset()
        llm.eval(w.tolist())
        logits = {"llama.cpp": torch.from_numpy(np.array(llm.scores[: len(w)])).float(),
                  "explorer": work.model(w[None]).logits[0].detach().float()}
        for who, lg in logits.items():
            nll[who].append(torch.nn.functional.cross_entropy(lg[:-1], w[1:], reduction="none"))
    ppl = {who: torch.cat(v).mean().exp().item() for who, v in nll.items()}
    assert abs(ppl["llama.cpp"] / ppl["explorer"] - 1) < 0.02, ppl  # the same file, the same tokens


def test_run_scores_a_gguf_file_as_the_recipe_in_memory(tiny_llama_with_smollm2s_tokenizer, tmp_path):
    """`run FILE.gguf`: the file's own values on its source model (a tiny Llama with SmolLM2's
    tokenizer; smollm2's own file is the test above), scored as the recipe was."""
    import json

    model = str(tiny_llama_with_smollm2s_tokenizer)
    code, out, err = main("export", model, "--number-format", "q4_0", "--include-embeddings", "--format", "gguf",
                          "--out", str(tmp_path), "--json")
    assert code == 0, err
    written = json.loads(out)
    code, out, err = main("run", written["file"], "--quick", "--json")
    assert code == 0, err
    from_file = json.loads(out)
    code, out, err = main("run", model, "--number-format", "q4_0", "--include-embeddings", "--quick", "--json")
    in_memory = json.loads(out)
    assert from_file["metrics"]["perplexity"] == pytest.approx(in_memory["metrics"]["perplexity"], rel=1e-6)
    assert from_file["memory"]["compressed_bytes"] == in_memory["memory"]["compressed_bytes"]
    assert from_file["export_stored"]["tensor_bytes"] == written["written_bytes"]
    code, _, err = main("run", written["file"], "--bits", "4")
    assert code == 2 and "recipe options do not apply to a GGUF file" in err


@pytest.mark.parametrize("recipe", [Recipe(bits=4, group_size=64), Recipe(bits=8, granularity="channel"),
                                    Recipe(number_format="q4_0", layers="mlp")], ids=["int4 g64", "int8 channel", "q4_0"])
def test_compressed_tensors_folder_loads_in_plain_transformers_with_our_values(smollm2_explorer, tmp_path, recipe):
    from transformers import AutoModelForCausalLM

    from engine.storage import ct_file

    work = smollm2_explorer.workspace()
    work.apply(recipe)
    report = ct_file.write(work, tmp_path)
    assert report["written_bytes"] == report["predicted_bytes"] > 0 and report["dense_fallback"] == 0
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)  # no gguf_file, no flags
    ids = smollm2_explorer.loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        assert torch.equal(model(ids).logits, work.model(ids).logits)


def test_compressed_tensors_refuses_what_it_cannot_hold_by_name(tmp_path):
    code, _, err = main("export", "minilm", "--bits", "4", "--asymmetric", "--format", "compressed-tensors",
                        "--out", str(tmp_path / "x"))
    assert code == 2 and "asymmetric" in err and "encoder.layer.0" in err and err.count("\n") == 1


def test_run_scores_a_compressed_tensors_folder_as_the_recipe_in_memory(tiny_llama_with_smollm2s_tokenizer, tmp_path):
    import json

    model = str(tiny_llama_with_smollm2s_tokenizer)
    code, out, err = main("export", model, "--bits", "4", "--group-size", "64", "--format", "compressed-tensors",
                          "--out", str(tmp_path / "w4"), "--json")
    assert code == 0, err
    code, out, err = main("run", str(tmp_path / "w4"), "--quick", "--json")
    assert code == 0, err
    from_folder = json.loads(out)
    code, out, err = main("run", model, "--bits", "4", "--group-size", "64", "--quick", "--json")
    in_memory = json.loads(out)
    assert from_folder["metrics"] == in_memory["metrics"]
    assert from_folder["memory"]["compressed_bytes"] == in_memory["memory"]["compressed_bytes"]
    assert from_folder["export_stored"]["format"] == "compressed-tensors"


def test_a_3_bit_grid_goes_into_gguf_only_with_the_fallback(smollm2_explorer, tmp_path):
    import json

    args = ["export", "smollm2", "--bits", "3", "--group-size", "32", "--group", "attention", "--format", "gguf",
            "--out", str(tmp_path)]
    code, _, err = main(*args)
    assert code == 2 and "no 3-bit GGUF type" in err and err.count("\n") == 1
    code, out, err = main(*args, "--dense-fallback", "--json")
    assert code == 0, err
    report = json.loads(out)
    # 120 attention matrices as q4_0 blocks: 4.5 bits a value where the explorer counts 3.5
    assert report["fallback_added_bytes"] == report["written_bytes"] - report["predicted_bytes"] > 0
    assert report["written_bytes"] * 3.5 == report["predicted_bytes"] * 4.5
