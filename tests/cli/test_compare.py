"""`python -m engine compare`: recipes and exports of a tiny Llama against it, and what it refuses."""
import json

import pytest

from cli_harness import main
from engine.recipe.recipe import Recipe


@pytest.fixture(scope="module")
def llama_candidates(tiny_models, tmp_path_factory):
    """The tiny Llama, recipe files at 8 and 4 bits, and an export at 4 bits written by `export`."""
    root = tmp_path_factory.mktemp("compare")
    files = {}
    for bits in (8, 4):
        files[bits] = root / f"q{bits}.json"
        files[bits].write_text(Recipe(bits=bits, include_embeddings=True).to_json())
    export = root / "export-q4"
    code, _, err = main("export", tiny_models["llama"], "--bits", "4", "--include-embeddings", "--out", str(export))
    assert code == 0, err
    return tiny_models["llama"], str(files[8]), str(files[4]), str(export)


@pytest.fixture(scope="module")
def compared(llama_candidates):
    """`compare --json` of the four candidates (the reference itself among them), on the first estimate's windows."""
    llama, q8, q4, export = llama_candidates
    code, out, err = main("compare", llama, q4, export, llama, q8, "--quick", "--json")
    assert code == 0, err
    return json.loads(out)  # exactly one JSON object on stdout


def test_json_sorted_by_kl_the_reference_against_itself_at_zero(llama_candidates, compared):
    llama, q8, q4, export = llama_candidates
    out = compared
    assert set(out) == {"reference", "candidates", "protocol"}
    ref = out["reference"]
    assert {"name", "bytes", "bits_per_weight", "perplexity", "perplexity_low", "perplexity_high"} <= set(ref)
    assert ref["name"] == llama and ref["bits_per_weight"] == 16.0
    assert ref["perplexity_low"] < ref["perplexity"] < ref["perplexity_high"]
    rows = out["candidates"]
    assert [r["name"] for r in rows] == [llama, q8, q4, export] or [r["name"] for r in rows] == [llama, q8, export, q4]
    kls = [r["kl"]["mean"] for r in rows]
    assert kls == sorted(kls)
    for r in rows:
        assert set(r) == {"name", "format", "recipe", "bytes", "bits_per_weight", "perplexity", "perplexity_low",
                          "perplexity_high", "kl", "same_top", "delta_p"}
        assert set(r["kl"]) == {"mean", "mean_stderr", "median", "p99", "p999", "max"}
        assert set(r["delta_p"]) == {"mean", "p1", "p5", "p95", "p99"}
        assert r["bits_per_weight"] == pytest.approx(8 * r["bytes"] / (ref["bytes"] / 2))
    by = {r["format"] if r["format"] != "recipe" else r["name"]: r for r in rows}
    itself = by["reference"]
    assert itself["kl"]["max"] == 0.0 and itself["same_top"] == 1.0 and itself["delta_p"]["mean"] == 0.0
    assert itself["bytes"] == ref["bytes"]
    assert 0 < by[q8]["kl"]["mean"] < by[q4]["kl"]["mean"]  # Q8 closer than Q4
    assert by[q8]["bytes"] > by[q4]["bytes"] and by[q4]["bits_per_weight"] < 5
    # the export holds the values the recipe makes: the same figures, and its bytes as its memory report counts
    assert by["explorer"]["kl"] == pytest.approx(by[q4]["kl"]) and by["explorer"]["bytes"] == by[q4]["bytes"]
    p = out["protocol"]
    assert p["quick"] and p["windows"] == 4 and p["tokens_scored"] == 4 * 255 and "exact" in p["kl"]


def test_table(llama_candidates, compared, capsys):
    from engine.cli.candidates import print_table

    llama = llama_candidates[0]
    print_table(compared)  # what compare prints without --json
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"reference {llama}: perplexity") and "16.00 bits per weight" in lines[0]
    assert lines[1].startswith("1,020 tokens in 4 windows of 256") and lines[1].endswith("[first estimate]")
    header = next(i for i, line in enumerate(lines) if line.startswith("candidate"))
    assert "KL mean" in lines[header] and "same top" in lines[header]
    rows = [line.split() for line in lines[header + 1:]]
    assert [r[0] for r in rows] == [c["name"] for c in compared["candidates"]]  # by mean KL
    assert rows[0][4:10] == ["0.000000"] * 6 and rows[0][10] == "100.000%"  # the reference itself


def test_refusals(tiny_models, llama_candidates, tmp_path):
    llama, q8, _, _ = llama_candidates
    gpt2_export = tmp_path / "gpt2-q8"
    assert main("export", tiny_models["gpt2"], "--bits", "8", "--out", str(gpt2_export))[0] == 0
    code, out, err = main("compare", llama, q8, str(gpt2_export))
    assert code == 2 and out == ""
    assert err.strip() == (f"error: compare: candidate '{gpt2_export}' is of another model than the reference: "
                           "architecture gpt2, the reference llama")
    code, _, err = main("compare", tiny_models["bert"], q8)
    assert code == 2 and "causal language models only" in err and len(err.strip().splitlines()) == 1
    code, _, err = main("compare", llama, str(tmp_path / "missing.json"))
    assert code == 2 and "no such file or folder" in err
    (tmp_path / "bad.json").write_text('{"bits": 5, "colour": 1}')
    code, _, err = main("compare", llama, str(tmp_path / "bad.json"))
    assert code == 2 and "bad.json" in err and len(err.strip().splitlines()) == 1
    code, _, err = main("compare", llama, str(tmp_path))  # a folder that is no export
    assert code == 2 and "not a recipe JSON file nor" in err


@pytest.fixture(scope="module")
def third_party(tmp_path_factory):
    """A tiny Llama written to GGUF in F16, Q8_0 and Q4_0 as a third-party converter writes them (no
    explorer.source), and a Llama of another vocabulary size in F16; converted in a cache of their own."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from gguf_harness import cut_tokenizer, llama_shape, write_gguf

    root = tmp_path_factory.mktemp("third-party")
    files = {}
    for vocab, kinds in ((1024, ("F16", "Q8_0", "Q4_0")), (512, ("F16",))):
        tokenizer = cut_tokenizer(root / f"tokenizer-{vocab}", vocab)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**llama_shape(vocab)))
        for kind in kinds:
            name = f"llama-{kind}" if vocab == 1024 else f"llama-vocab{vocab}-{kind}"
            files[name] = write_gguf(root / f"{name}.gguf", model, tokenizer, "llama", kind)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPRESSION_EXPLORER_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield files


def test_third_party_gguf_files_are_candidates_counted_from_their_tensors(third_party):
    import gguf

    reference, q8, q4 = (str(third_party[f"llama-{k}"]) for k in ("F16", "Q8_0", "Q4_0"))
    code, out, err = main("compare", reference, q4, q8, "--quick", "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)["candidates"]}
    assert list(rows) == ["llama-Q8_0.gguf", "llama-Q4_0.gguf"]  # by file name, by mean KL
    assert 0 < rows["llama-Q8_0.gguf"]["kl"]["mean"] < rows["llama-Q4_0.gguf"]["kl"]["mean"]
    assert rows["llama-Q8_0.gguf"]["format"] == "gguf-model" and rows["llama-Q8_0.gguf"]["recipe"] is None
    # by hand: 204,800 matrix values in the file's type (blocks of 32), 320 norm values in F32
    matrices, norms = 2 * 1024 * 64 + 2 * (4 * 64 * 64 // 2 + 2 * 64 * 64 // 2 + 3 * 64 * 128), 5 * 64
    assert matrices == 204_800
    for kind in ("Q8_0", "Q4_0"):
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
        n = matrices // block * size + 4 * norms
        assert rows[f"llama-{kind}.gguf"]["bytes"] == n
        assert rows[f"llama-{kind}.gguf"]["bits_per_weight"] == pytest.approx(8 * n / (matrices + norms))
    assert rows["llama-Q4_0.gguf"]["bits_per_weight"] < 5 < rows["llama-Q8_0.gguf"]["bits_per_weight"] < 9


def test_a_gguf_file_of_another_vocabulary_is_refused(third_party):
    other = str(third_party["llama-vocab512-F16"])
    code, out, err = main("compare", str(third_party["llama-F16"]), other, "--quick")
    assert code == 2 and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # after the conversion's progress bar
    assert errors == [f"error: compare: candidate {other!r} is a model the reference cannot be compared with "
                           "token by token: vocabulary size 512, the reference 1024"]
