"""Packed export and reload: exact bytes, identical values and metrics, atomic writes, bad files refused."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cli_harness import ROOT, main, run_json
from engine.errors import UserError
from engine.methods.svd import svd
from engine.pipeline.compress import compress
from engine.recipe.recipe import Recipe
from engine.storage import explorer_format as export
from engine.storage.codec import decode_layer, decode_matrix, encode_layer, encode_matrix, nbytes


def _compressed(recipe, shape=(24, 40), seed=0):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return compress("m", w, recipe, lambda: svd(w))


FORMATS = [
    (Recipe(bits=b), "dense") for b in (2, 3, 4, 5, 6, 7, 8)
] + [
    (Recipe(bits=3, symmetric=False, group_size=16), "dense"),
    (Recipe(bits=4, granularity="channel", sparsity=0.5), "bitmask"),
    (Recipe(bits=5, granularity="tensor", sparsity=0.99), "csr"),
    (Recipe(bits=3, pattern="2:4", symmetric=False), "N:M"),
    (Recipe(bits=7, pattern="1:8", group_size=8), "N:M"),
    (Recipe(bits=3, quant_method="kmeans", sparsity=0.6), "bitmask"),
    (Recipe(bits=2, quant_method="kmeans"), "dense"),
    (Recipe(sparsity=0.99), "csr"),
    (Recipe(rank=6, bits=4, group_size=8, sparsity=0.5), "bitmask"),
]


@pytest.mark.parametrize("recipe, fmt", FORMATS, ids=lambda x: x.describe() if isinstance(x, Recipe) else x)
def test_each_format_decodes_to_exactly_the_compressed_values_in_the_predicted_bytes(recipe, fmt):
    # 42: groups and N:M groups that do not divide the row; CSR wins only on long, very sparse rows
    stored = _compressed(recipe, shape=(4, 3000) if fmt == "csr" else (24, 42))
    kmeans = recipe.quant_method == "kmeans"
    for sm in stored.matrices:
        m, keep, grid, part = sm.values, sm.keep, sm.grid, sm.bytes
        forced = part.format if fmt != "N:M" else f"{recipe.nm[0]}:{recipe.nm[1]}"
        if fmt != "N:M":
            assert part.format == fmt  # the memory count chose this format
        t = encode_matrix(m, keep, grid, recipe, forced).tensors
        written = sum(x.numel() * x.element_size() for x in t.values())
        if forced == part.format:
            assert written == part.total
        kept = m.numel() if keep is None else int(keep.sum())
        assert kept == sm.kept
        values, grid_back, keep_back = decode_matrix(t, tuple(m.shape), kept, recipe, forced)
        assert torch.equal(values, m)
        on = torch.ones_like(m, dtype=torch.bool) if keep is None else keep
        assert torch.equal(grid_back.snap(values, recipe)[on], values[on])  # the grid read back holds every kept value
        if keep_back is not None:
            assert torch.equal(keep_back, keep)
        coded = encode_matrix(m, keep, grid, recipe, forced, entropy=True).tensors
        assert torch.equal(decode_matrix(coded, tuple(m.shape), kept, recipe, forced)[0], m)
        assert all(torch.equal(coded[k], t[k]) for k in t if k != "values")  # only the values may change
        if "huffman" in coded:  # and only where the coded bytes are fewer
            assert "values" not in coded and nbytes(coded) < written
        else:
            assert torch.equal(coded["values"], t["values"])
        if 2 <= recipe.bits <= 4 and fmt == "dense" and recipe.symmetric and not kmeans:  # codes bunch at 0: coding pays
            assert "huffman" in coded
    tensors, parts = encode_layer(stored)  # the whole layer, and back
    back = decode_layer("m", stored.shape, recipe, stored.rank, parts, tensors)
    assert back.bytes == stored.bytes and all(torch.equal(a, b) for a, b in zip(back.tensors(), stored.tensors()))


@pytest.fixture(scope="module")
def minilm(minilm_explorer):
    return minilm_explorer, minilm_explorer.workspace()


@pytest.mark.parametrize("recipe", [
    Recipe(rank_ratio=0.4, bits=4, sparsity=0.5, include_embeddings=True),
    Recipe(bits=3, symmetric=False, pattern="2:4", quant_method="gptq", distill_steps=1),
    Recipe(bits=3, quant_method="kmeans", sparsity=0.9, layers=r"layer\.[0-2]\."),
], ids=["low rank+int4+50%+embeddings", "gptq asym 2:4 distilled", "kmeans 90% some layers"])
def test_export_reloads_with_identical_metrics_and_exact_bytes(minilm, tmp_path, recipe):
    ex, work = minilm
    work.apply(recipe)
    before = work.evaluate()
    manifest = export.write(work, tmp_path / "out")
    assert manifest["tensor_bytes"] == manifest["predicted_bytes"] == work.applied.memory.compressed_bytes
    size = (tmp_path / "out" / "model.safetensors").stat().st_size
    assert size == manifest["tensor_bytes"] + manifest["header_bytes"] and 0 < manifest["header_bytes"] < 64 * 1024
    again = ex.workspace()
    applied = export.load_into(again, tmp_path / "out")
    assert applied.memory.compressed_bytes == manifest["predicted_bytes"] and applied.recipe == recipe
    after = again.evaluate()
    assert after == pytest.approx(before, rel=1e-6)
    for name in list(work.holders)[:6]:
        assert torch.equal(work.holders[name].matrix(), again.holders[name].matrix())
    if recipe.quant_method != "rtn":  # Huffman-coded once, on the first recipe (time)
        return
    # Huffman-coded: fewer bytes, exactly the same values, so the same metrics
    coded = export.write(work, tmp_path / "coded", entropy=True)
    parts = [p for layer in coded["layers"] for p in layer["parts"]]
    saved = sum(p["values"] - p["values_written"] for p in parts)
    assert coded["entropy"] and any(p["coding"] == "huffman" for p in parts) and saved > 0
    assert coded["tensor_bytes"] == manifest["tensor_bytes"] - saved  # the real size of what was written
    size = (tmp_path / "coded" / "model.safetensors").stat().st_size
    assert size == coded["tensor_bytes"] + coded["header_bytes"]
    third = ex.workspace()
    export.load_into(third, tmp_path / "coded")
    for name in work.holders:
        assert torch.equal(third.holders[name].matrix(), again.holders[name].matrix()), name


def test_cli_export_then_run_the_folder(tmp_path):
    out = tmp_path / "int4"
    code, stdout, err = main("export", "minilm", "--bits", "4", "--sparsity", "0.5", "--out", str(out), "--entropy")
    assert code == 0, err
    manifest = export.read_manifest(out)
    assert f"tensor data {manifest['tensor_bytes']:,} bytes Huffman-coded, {manifest['predicted_bytes']:,} at fixed" \
        in stdout and manifest["tensor_bytes"] < manifest["predicted_bytes"]
    loaded = run_json(str(out), "--quick")
    direct = run_json("minilm", "--bits", "4", "--sparsity", "0.5", "--quick")
    assert loaded["export"] == str(out) and loaded["memory"]["compressed_bytes"] == direct["memory"]["compressed_bytes"]
    assert loaded["export_stored"] == {"tensor_bytes": manifest["tensor_bytes"], "header_bytes": manifest["header_bytes"],
                                       "predicted_bytes": manifest["predicted_bytes"], "entropy": True}
    assert loaded["metrics"]["cosine_to_original"] == pytest.approx(direct["metrics"]["cosine_to_original"], rel=1e-6)
    code, _, err = main("run", str(out), "--bits", "3")
    assert code == 2 and "do not apply to an export" in err


def test_corrupt_truncated_or_missing_files_are_refused_by_name(minilm, tmp_path):
    _, work = minilm
    work.apply(Recipe(bits=4))
    folder = tmp_path / "e"
    export.write(work, folder)
    data = folder / "model.safetensors"
    good = data.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="model.safetensors is corrupt"):
        export.read(folder)
    data.write_bytes(bytes(raw[: len(raw) // 3]))
    with pytest.raises(UserError, match="model.safetensors has .* bytes.*truncated"):
        export.read(folder)
    data.write_bytes(good)
    export.read(folder)  # whole again
    (folder / "recipe.json").unlink()
    with pytest.raises(UserError, match="recipe.json is missing"):
        export.read(folder)
    (folder / "manifest.json").write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="manifest.json is missing or not an export manifest"):
        export.read(folder)
    code, _, err = main("run", str(folder))
    assert code == 2 and err.strip().count("\n") == 0 and "manifest.json" in err


def test_a_folder_that_is_not_an_export_is_never_overwritten(minilm, tmp_path):
    _, work = minilm
    work.apply(Recipe(bits=8))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(UserError, match="exists and is not an export"):
        export.write(work, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text(encoding="utf-8") == "keep me"


def test_zipped_holds_the_export_and_refuses_large_models(minilm):
    import io
    import zipfile

    _, work = minilm
    work.apply(Recipe(bits=8))
    data, manifest = export.zipped(work, "m8")
    assert manifest["tensor_bytes"] == work.applied.memory.compressed_bytes
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert sorted(names) == ["m8/config.json", "m8/manifest.json", "m8/model.safetensors", "m8/recipe.json"]
    with pytest.raises(UserError, match="too large to download"):
        export.zipped(work, "m8", limit=2**20)


def test_an_interrupted_export_leaves_the_earlier_one_whole(tmp_path):
    out = tmp_path / "model"
    code, _, err = main("export", "minilm", "--bits", "8", "--out", str(out))
    assert code == 0, err
    first = export.read(out)[0]
    # a second export of the same name, killed while it writes
    proc = subprocess.Popen([sys.executable, "-m", "engine", "export", "minilm", "--bits", "2", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(n.startswith(".model.partial") for n in os.listdir(tmp_path)):
        time.sleep(0.005)
    assert proc.poll() is None, "the writer ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    manifest, _ = export.read(out)  # still the first export, every file checked
    assert manifest == first and manifest["recipe"]["bits"] == 8
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".")] == ["model"]
    # what the killed writer left is cleared by the next export of that name, before it writes
    assert any(n.startswith(".model.partial") for n in os.listdir(tmp_path))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)
    os.replace(out, tmp_path / f".model.old-{dead}")  # as if a writer died between its two renames
    export._clean_stale(out)
    assert os.listdir(tmp_path) == ["model"] and export.read(out)[0] == first  # put back whole
