"""MXFP4 (number format mxfp4): llama.cpp's blocks, byte for byte against the gguf package's
reference quantizer, on its grid, counted exactly, refused where it cannot apply, and in a GGUF file."""
import gguf
import numpy as np
import pytest
import torch

from engine.errors import UserError
from engine.formats import ggml
from engine.formats.ggml import fp4
from engine.recipe.recipe import Recipe
from engine.storage import codec, gguf_file

MXFP4 = gguf.GGMLQuantizationType.MXFP4


def reference(w: torch.Tensor) -> np.ndarray:
    return gguf.quants.quantize(w.float().numpy(), MXFP4)


def test_blocks_equal_the_gguf_reference_quantizer_byte_for_byte(minilm_explorer, smollm2_explorer):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g) * torch.logspace(-4, 1, 64)[:, None]  # scales over five decades
    w[3, :32] = 0  # an all-zero block: scale byte 0
    w[5, 7] = 40.0  # an outlier that widens its block's scale
    real = [minilm_explorer.weight("encoder.layer.2.intermediate.dense"),
            smollm2_explorer.weight("model.layers.3.self_attn.k_proj")]
    for m in [w, *real]:
        values, raw = fp4.quantize(m)
        assert np.array_equal(raw.numpy(), reference(m)), "bytes differ from gguf's MXFP4"
        back = gguf.quants.dequantize(raw.numpy(), MXFP4)
        assert torch.equal(values, torch.from_numpy(back))  # the values are the file's


def test_every_value_is_an_e2m1_float_times_a_power_of_two_and_bytes_are_17_per_32():
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(1))
    values, raw = fp4.quantize(w)
    assert raw.shape == (8, 128 // 32 * 17) and ggml.TYPES["mxfp4"].bits_per_value == 4.25
    assert gguf.GGML_QUANT_SIZES[MXFP4] == (32, 17)
    scale = fp4.e8m0_half(raw.reshape(-1, 17)[:, 0])  # half the block's power-of-two scale
    assert torch.equal(scale.log2(), scale.log2().round())
    steps = values.reshape(-1, 32) / scale[:, None]
    assert set(steps.flatten().tolist()) <= set(map(float, fp4.KVALUES))  # 0, ±0.5 ... ±6 doubled
    err = (values - w).abs().reshape(-1, 32)
    amax = w.abs().reshape(-1, 32).amax(1)
    assert (err.amax(1) <= amax / 4 + 1e-6).all()  # at most half the widest gap (4 to 6 doubled: 2 steps)


def test_a_recipe_in_mxfp4_counts_its_blocks_and_refuses_what_it_cannot_hold(minilm_explorer, tmp_path):
    work = minilm_explorer.workspace()
    work.apply(Recipe(number_format="mxfp4"))
    name = "encoder.layer.0.attention.self.query"
    stored = work.stored[name]
    assert stored.bytes.compressed_bytes == 384 * 384 // 32 * 17
    assert stored.recipe.bits == 4 and stored.recipe.group_size == 32
    assert gguf_file.tensor_type(stored)[0] == "mxfp4"  # GGUF holds it as it is
    tensors, parts = codec.encode_layer(stored)  # the explorer's own export: the blocks, read back exactly
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == stored.bytes.compressed_bytes
    back = codec.decode_layer(name, stored.shape, stored.recipe, None, parts, tensors)
    assert torch.equal(back.matrix(), stored.matrix())
    errors = {fmt: None for fmt in ("mxfp4", "q4_0")}
    for fmt in errors:
        work.apply(Recipe(number_format=fmt))
        errors[fmt] = work.layer_errors()
    for fmt in errors:  # both round every value of every layer to a 4-bit grid: error well under 20%
        assert all(0 < r["relative_error"] < 0.2 for r in errors[fmt] if r["relative_error"] is not None)
    with pytest.raises(UserError, match="imatrix"):
        Recipe(number_format="mxfp4", quant_method="imatrix")
    with pytest.raises(UserError, match="gptq"):
        Recipe(number_format="mxfp4", quant_method="gptq")
    assert Recipe(quant_method="imatrix", number_format="q4_k").updated(number_format="mxfp4").quant_method == "rtn"


def test_smollm2_attention_in_mxfp4_goes_into_a_gguf_file_as_stored(smollm2_explorer, tmp_path):
    work = smollm2_explorer.workspace()
    work.apply(Recipe(number_format="mxfp4", group="attention"))
    report = gguf_file.write(work, tmp_path)
    assert report["written_bytes"] == report["predicted_bytes"] and report["fallback_added_bytes"] == 0
    tensors = [t for t in gguf.GGUFReader(report["file"]).tensors if t.tensor_type == MXFP4]
    assert len(tensors) == 30 * 4  # q, k, v and o of 30 blocks
    for t in tensors[:4]:
        cols, rows = (int(x) for x in t.shape)
        assert t.n_bytes == rows * cols // 32 * 17
