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
