"""Models loaded across devices by accelerate (here: the CPU and the disk), compressed and
evaluated layer by layer: the same bytes and metrics as the in-memory workspace."""
import hashlib
import json

import pytest
import torch

from engine import cli, offload
from engine.errors import UserError
from engine.evaluate import make_evaluator
from engine.models import minilm_path
from engine.recipe import Recipe
from engine.session import Explorer


def test_max_memory_is_parsed_and_bad_specs_are_one_line():
    assert offload.parse_max_memory("cpu=200MiB") == {"cpu": "200MiB"}
    assert offload.parse_max_memory(" cpu = 2GB , ") == {"cpu": "2GB"}
    for bad, says in [("cpu", "not DEVICE=SIZE"), ("gpu=1GB,cpu=1GB", "not DEVICE=SIZE"), ("cpu=lots", "not a size"),
                      ("cpu=0MB", "not a size"), ("disk=1GB", "give the CPU's share"),
                      (f"{torch.cuda.device_count()}=1GB,cpu=1GB", "this machine has")]:
        with pytest.raises(UserError, match=says):
            offload.parse_max_memory(bad)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_a_model_on_disk_compresses_like_the_workspace(tiny_models, tmp_path, name):
    # every weight offloaded (1 MB of CPU): GPT-2's Conv1D and its tied head read from and written to disk
    recipe = Recipe(rank_ratio=0.5, bits=4, group_size=16, sparsity=0.5, include_embeddings=True)
    off = offload.load(tiny_models[name], {"cpu": "1MB"}, str(tmp_path))
    assert set(offload.device_map(off.loaded.model).values()) == {"disk"}
    evaluator = make_evaluator(off.loaded)
    out = offload.run(off, recipe, evaluator)
    ex = Explorer.open(tiny_models[name], device="cpu")
    work = ex.workspace()
    work.apply(recipe)
    assert out["memory"]["compressed_bytes"] == work.applied.memory.compressed_bytes
    assert out["metrics"] == pytest.approx(work.evaluate(), rel=1e-4)
    errors = {e["name"]: e["relative_error"] for e in work.layer_errors()}
    for layer in out["memory"]["layers"]:
        assert layer["relative_error"] == pytest.approx(errors.get(layer["tied_to"] or layer["name"]), rel=1e-4)


def test_cli_run_with_max_memory_offloads_minilm_and_scores_as_in_memory(tmp_path, capsys):
    checkpoint = minilm_path() / "model.safetensors"
    before = _sha(checkpoint)
    argv = ["run", "minilm", "--bits", "4", "--sparsity", "0.5", "--include-embeddings", "--quick", "--json"]
    assert cli.main([*argv, "--max-memory", "cpu=60MB", "--offload-folder", str(tmp_path / "off")]) == 0
    out = json.loads(capsys.readouterr().out)
    placed = out["offload"]["placement_bytes"]
    assert set(placed) == {"cpu", "disk"} and placed["disk"] > 30 * 2**20  # the encoder was on disk
    assert sum(placed.values()) == 4 * 22_713_216  # every parameter, fp32
    assert list((tmp_path / "off").iterdir()) == []  # the offloaded copies are gone
    assert _sha(checkpoint) == before  # and the model's own files never written
    ex = Explorer.open("minilm", device="cpu")
    work = ex.workspace()
    work.apply(Recipe(bits=4, sparsity=0.5, include_embeddings=True))
    assert out["memory"]["compressed_bytes"] == work.applied.memory.compressed_bytes
    assert out["metrics"]["cosine_to_original"] == pytest.approx(work.evaluate(quick=True)["cosine_to_original"],
                                                                  rel=1e-4)
    assert out["peak_memory"]["peak_bytes"] > 0 and out["offload"]["peak_memory_compress"]["peak_bytes"] > 0


def test_offload_refuses_what_it_cannot_do(capsys):
    for extra, says in [(["--quant-method", "gptq"], "calibrated methods"), (["--device", "cpu"], "drop --device"),
                        (["--max-memory", "cpu=1GB,x=2GB"], "not DEVICE=SIZE")]:
        argv = ["run", "minilm", "--bits", "4", *(["--max-memory", "cpu=60MB"] if "--max-memory" not in extra else []),
                *extra]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert cli.main(["run", "minilm", "--offload-folder", "x"]) == 2
    assert "needs --max-memory" in capsys.readouterr().err
