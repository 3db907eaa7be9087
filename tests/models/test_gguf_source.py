"""Any GGUF file as a source model (engine.models.gguf_source): tiny Llama and Qwen2 models written
here with the gguf package, as a third-party converter writes them (no explorer.source), in F16,
Q8_0 and Q4_0, with SmolLM2's tokenizer cut to its first 1,024 tokens (its metadata is then read in
milliseconds, not seconds). They run end to end, are converted once into a cache keyed by their
bytes, say what their weights are, export and run back, and are refused in one line when they
cannot be loaded."""
import json
import shutil

import gguf
import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from cli_harness import main, run_json
from engine.models import gguf_source
from engine.models.loading import load
from engine.storage import gguf_file
from gguf_harness import TYPES, VOCAB, cut_tokenizer, llama_shape, write_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the models by architecture, the GGUF files by 'arch-type')."""
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = cut_tokenizer(root / "tokenizer")
    shape = llama_shape()
    torch.manual_seed(0)
    models = {"llama": LlamaForCausalLM(LlamaConfig(**shape)), "qwen2": Qwen2ForCausalLM(Qwen2Config(**shape))}
    files = {f"{arch}-{kind}": write_gguf(root / f"{arch}-{kind}.gguf", m, tokenizer, arch, kind)
             for arch, m in models.items() for kind in TYPES}
    return models, files


@pytest.fixture(scope="module", autouse=True)
def cache(tiny, tmp_path_factory):
    """The converted folders of this module, in a cache folder of its own (set once the tiny models
    have their tokenizer from smollm2's folder in the machine's cache)."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPRESSION_EXPLORER_CACHE", str(folder))
        yield folder / "gguf"


def _converted(cache) -> set[str]:
    return {p.name for p in cache.iterdir()} if cache.exists() else set()


@pytest.mark.parametrize("name", [f"{a}-{k}" for a in ("llama", "qwen2") for k in TYPES])
def test_a_third_party_gguf_file_runs_end_to_end(tiny, name):
    out = run_json(str(tiny[1][name]), "--bits", "4")
    assert out["model"] == str(tiny[1][name]) and out["kind"] == "causal-lm" and out["export"] is None
    kind = name.split("-")[1]
    assert out["note"].startswith(f"baseline is {name}.gguf dequantized to fp32 from a GGUF file of types {kind} (")
    assert out["memory"]["compressed_bytes"] < out["memory"]["original_bytes"]
    assert 1 < out["baseline_metrics"]["perplexity"] < 2 * VOCAB  # a random model: about uniform over the vocabulary


def test_the_fp32_weights_are_the_files_values(tiny):
    models, files = tiny
    ids = torch.arange(3, 40)[None]
    for arch, model in models.items():
        for kind, atol in (("F16", 1e-3), ("Q8_0", 3e-2)):
            loaded = load(str(files[f"{arch}-{kind}"]), "cpu")
            with torch.inference_mode():
                theirs, ours = loaded.model(ids).logits, model(ids).logits
            assert torch.allclose(theirs, ours, atol=atol), (arch, kind, (theirs - ours).abs().max())


def test_the_note_names_the_types_with_their_share(tiny):
    # llama: 2 x 65,536 (embeddings, head) + 2 x 36,864 (layers) = 204,800 matrix values; 5 x 64 = 320 norm values
    assert load(str(tiny[1]["llama-Q8_0"]), "cpu").note == (
        "baseline is llama-Q8_0.gguf dequantized to fp32 from a GGUF file of types Q8_0 (99.8%), F32 (0.2%): "
        "mostly Q8_0, 8-bit codes at 8.5 bits per weight with their scales; an already quantized model, "
        "not the original weights")
    # qwen2: 320 + 2 x 128 bias values in F32
    assert load(str(tiny[1]["qwen2-F16"]), "cpu").note == (
        "baseline is qwen2-F16.gguf dequantized to fp32 from a GGUF file of types F16 (99.7%), F32 (0.3%): "
        "mostly F16, 16 bits per weight")


def test_the_cache_is_keyed_by_the_files_bytes(tiny, cache, tmp_path, monkeypatch):
    original = tiny[1]["llama-Q4_0"]
    folder, _ = gguf_source.converted(original)
    before = _converted(cache)
    assert folder.name in before and not [p for p in cache.iterdir() if ".tmp-" in p.name]
    copy = shutil.copy(original, tmp_path / "renamed.gguf")
    with monkeypatch.context() as mp:
        mp.setattr(gguf_source, "_convert", lambda *a: pytest.fail("a copy converted again"))
        assert gguf_source.converted(copy)[0] == folder
        assert load(str(copy), "cpu").source == str(folder)
    with open(copy, "r+b") as f:  # one bit of the head's last block changed: another file
        f.seek(-1, 2)
        last = f.read(1)[0]
        f.seek(-1, 2)
        f.write(bytes([last ^ 1]))
    changed, _ = gguf_source.converted(copy)
    assert changed != folder and _converted(cache) == before | {changed.name}


def test_export_of_a_gguf_source_runs_back_as_its_recipe(tiny, tmp_path):
    source = str(tiny[1]["llama-Q8_0"])
    code, out, err = main("export", source, "--number-format", "q4_0", "--format", "gguf", "--out", str(tmp_path),
                          "--json")
    assert code == 0, err
    written = json.loads(out)
    assert written["file"] == str(tmp_path / "llama-Q8_0.gguf") and gguf_file.is_export(written["file"])
    from_folder = run_json(str(tmp_path), "--quick")
    in_memory = run_json(source, "--number-format", "q4_0", "--quick")
    assert from_folder["recipe"] == in_memory["recipe"] and from_folder["export_stored"]["format"] == "gguf"
    assert from_folder["metrics"]["perplexity"] == pytest.approx(in_memory["metrics"]["perplexity"], rel=1e-6)
    assert from_folder["memory"]["compressed_bytes"] == in_memory["memory"]["compressed_bytes"]
    assert from_folder["note"] == in_memory["note"]  # the source model's, read from the source file
    code, _, err = main("export", source, "--bits", "8", "--group-size", "32", "--format", "gguf",
                        "--out", str(tiny[1]["llama-Q8_0"].parent))
    assert code == 2 and "would replace its own source model" in err and err.count("\n") == 1


def test_a_folder_that_holds_one_gguf_file_is_that_file(tiny, tmp_path):
    shutil.copy(tiny[1]["qwen2-Q4_0"], tmp_path / "model.gguf")
    folder = run_json(str(tmp_path), "--bits", "4", "--quick")
    file = run_json(str(tiny[1]["qwen2-Q4_0"]), "--bits", "4", "--quick")
    assert folder["metrics"] == file["metrics"] and "model.gguf" in folder["note"]
    shutil.copy(tiny[1]["qwen2-Q8_0"], tmp_path / "other.gguf")
    code, _, err = main("run", str(tmp_path), "--bits", "4")
    assert code == 2 and "2 GGUF files (model.gguf, other.gguf): give one of them" in err and err.count("\n") == 1


def _metadata_only(path, arch="llama", tensor=False):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("no weights")
    if tensor:
        w.add_tensor("token_embd.weight", np.zeros((4, 32), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("what, says", [
    ("architecture", "cannot load GGUF architecture 'rwkv6': transformers"),
    ("truncated", "is truncated"),
    ("not gguf", "is not a GGUF file"),
    ("no tensors", "holds no tensors"),
])
def test_files_that_cannot_be_loaded_are_refused_in_one_line(tiny, cache, tmp_path, what, says):
    path = tmp_path / "bad.gguf"
    if what == "architecture":
        _metadata_only(path, "rwkv6", tensor=True)
    elif what == "truncated":
        data = tiny[1]["llama-Q4_0"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif what == "not gguf":
        path.write_text("not a model\n")
    else:
        _metadata_only(path)
    before = _converted(cache)
    code, out, err = main("run", str(path), "--bits", "4")
    assert code == 2 and says in err and err.count("\n") == 1 and out == "", err
    assert _converted(cache) == before
