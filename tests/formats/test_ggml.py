"""llama.cpp's formats: bytes against gguf's definitions, values against its reference quantizers
and the shipped SmolLM2 GGUF, llama.cpp's fallbacks and mixes, GPTQ on q4_0, the kernels."""
import gguf
import numpy as np
import pytest
import torch

from engine.drivers.footprint import open_skeleton, predict
from engine.formats import FORMATS, ggml
from engine.formats.bytes import ggml_bytes
from engine.formats.ggml import legacy
from engine.methods.gptq import gptq_quantize
from engine.pipeline.compress import compress
from engine.pipeline.compress import predict as predict_layer
from engine.recipe.presets import layer_types, preset_recipe
from engine.recipe.recipe import Recipe, RecipeError
from engine.speed import choosing


def _weights(rows=16, cols=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[1, 7], w[2, 50], w[3, :32] = 1.3, -2.0, 0.0  # outliers, and a block of zeros
    return w


def test_every_type_has_ggmls_block_and_bytes():
    assert [f for f in FORMATS if FORMATS[f].family == "ggml"] == list(ggml.TYPES)
    for name, t in ggml.TYPES.items():
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
        assert (t.block, t.size) == (block, size)
        f = FORMATS[name]
        assert (f.bits, f.block, f.symmetric, f.bits_per_value) == (t.bits, t.block, t.symmetric, 8 * size / block)
        b = ggml_bytes(3, 2 * block, name)
        assert b.total == 3 * 2 * size and b.values == 3 * 2 * block * t.bits // 8
    assert ggml.TYPES["q4_k"].bits_per_value == 4.5 and ggml.TYPES["q2_k"].bits_per_value == 2.625
    assert ggml_bytes(2, 100, None).total == 400  # no type fits: fp16


@pytest.mark.parametrize("fmt", legacy.__dict__["_OFFSET"])
def test_legacy_types_are_the_reference_quantizers_bit_for_bit(fmt):
    w = _weights()
    values, raw = ggml.quantize(w, fmt)
    kind = gguf.GGMLQuantizationType[fmt.upper()]
    assert np.array_equal(raw.numpy(), gguf.quants.quantize(w.numpy(), kind))
    assert torch.equal(values, ggml.dequantize(raw, fmt, w.shape[1]))
    assert raw.shape == (16, 512 // 32 * ggml.TYPES[fmt].size)
    assert torch.equal(values[3, :32], torch.zeros(32))


def test_the_shipped_smollm2_gguf_byte_for_byte():
    """Every tensor of the shipped Q4_1 file in a type we have: our bytes for its shape are its
    bytes, and re-quantizing the values it holds gives llama.cpp's bytes back."""
    from engine.models.loading import gguf_file

    reader = gguf.GGUFReader(gguf_file("smollm2"))
    checked = 0
    for t in reader.tensors:
        fmt = t.tensor_type.name.lower()
        if fmt not in ggml.TYPES:
            continue
        cols, rows = (int(x) for x in t.shape)  # GGUF lists the row length first
        assert ggml_bytes(rows, cols, fmt).total == t.n_bytes
        raw = np.asarray(t.data).reshape(rows, -1)
        values = gguf.quants.dequantize(raw, t.tensor_type).reshape(rows, cols)
        _, ours = ggml.quantize(torch.from_numpy(values.copy()), fmt)
        assert np.array_equal(ours.numpy(), raw), t.name
        checked += 1
    assert checked == 211  # 210 in q4_1 and the embedding in q8_0


def test_llama_cpp_fallbacks_for_rows_blocks_do_not_divide():
    assert [ggml.fit(f, 576) for f in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")] == \
        ["q4_0", "q4_0", "q5_0", "q5_1", "q8_0"]
    assert ggml.fit("q4_k", 1536) == "q4_k" and ggml.fit("q8_0", 100) is None and ggml.fit("q4_k", 100) is None
    layer = compress("x", _weights(8, 576), Recipe(number_format="q4_k"), factors=None)
    (m,) = layer.matrices
    assert m.grid.ggml == "q5_0" and m.bytes.total == 8 * 18 * 22 and layer.bytes.format == "q5_0"
    odd = compress("y", _weights(4, 100), Recipe(number_format="q4_0"), factors=None)
    assert odd.matrices[0].bytes.format == "f16" and odd.report(None).bits == 16


def test_recipe_number_format_fields():
    r = Recipe(number_format="q4_1")
    assert (r.bits, r.granularity, r.group_size, r.symmetric) == (4, "group", 32, False)
    assert Recipe.from_json(r.to_json()) == r and r.describe() == "Q4_1"
    assert r.updated(bits=3).number_format == "int"  # a width given alone is the explorer's own grid
    assert Recipe(bits=3, group_size=64).updated(number_format="q6_k").bits == 6
    assert Recipe(quant_method="kmeans", bits=4).updated(number_format="q4_0").quant_method == "rtn"
    assert Recipe(number_format="q4_k", quant_method="imatrix").updated(number_format="int").quant_method == "rtn"
    for bad, field in [(dict(number_format="q4_k", bits=3), "bits"), (dict(number_format="q4_k", quant_method="gptq"),
                        "quant_method"), (dict(number_format="q4_0", sparsity=0.5), "number_format"),
                       (dict(number_format="q4_0", rank_ratio=0.5), "number_format"),
                       (dict(quant_method="imatrix"), "quant_method"), (dict(number_format="q9"), "number_format"),
                       (dict(number_format="q8_0", distill_steps=5), "distill_steps")]:
        with pytest.raises(RecipeError, match=f"^{field}"):
            Recipe(**bad)


def test_predicted_bytes_equal_the_stored_ones():
    w = _weights(8, 1536)
    for fmt in ("q4_0", "q5_1", "q8_0"):
        recipe = Recipe(number_format=fmt)
        stored = compress("x", w, recipe, factors=None)
        info = type("Info", (), {"name": "x", "shape": (8, 1536)})()
        assert predict_layer(info, recipe).bytes == stored.bytes


def test_gptq_on_q4_0_beats_llama_cpps_round_to_nearest_at_the_same_bytes():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 64, generator=g) @ torch.randn(64, 128, generator=g)  # correlated inputs
    h = x.T @ x / x.shape[0]
    w = torch.randn(32, 128, generator=g) * 0.1
    rule = legacy.Grid("q4_0")
    q, (d, lo) = gptq_quantize(w, h, 4, "group", 32, True, return_grid=True, rule=rule)
    raw = rule.pack(q, d, lo)
    assert torch.equal(ggml.dequantize(raw, "q4_0", 128), q)  # on q4_0's blocks: llama.cpp reads it
    rtn, raw_rtn = ggml.quantize(w, "q4_0")
    assert raw.shape == raw_rtn.shape

    def out_err(v):
        return torch.trace((w - v) @ h @ (w - v).T).item()
    assert out_err(q) < 0.8 * out_err(rtn)


@pytest.mark.parametrize("fmt", ["q4_0", "q4_1"])
def test_q4_0_and_q4_1_run_on_the_int4_kernel(fmt):
    stored = compress("x", _weights(32, 256), Recipe(number_format=fmt), factors=None)
    (m,) = stored.matrices
    module = choosing.matmul(m, stored.recipe, torch.float32)
    assert module.kernel == "int4"
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(module(x), x @ m.values.T, rtol=1e-4, atol=1e-5)
    other = compress("y", _weights(32, 256), Recipe(number_format="q8_0"), factors=None)
    assert "llama.cpp" in choosing.matmul(other.matrices[0], other.recipe, torch.float32).note


def test_q4_k_m_on_llama_3_8b_is_llama_cpps_mix():
    """Counted by hand from llama.cpp's rules: 32 blocks; V and down in q6_k where
    use_more_bits (the first 4, the last 4, every third between: 16 blocks); the head in q6_k;
    the untied embedding in q4_k. The files' sizes are those llama.cpp reports for them."""
    sk = open_skeleton("llama-3-8b")
    types = layer_types("q4_k_m", sk.layers, sk.config)
    q6 = sorted(n for n, t in types.items() if t == "q6_k")
    more = [i for i in range(32) if i < 4 or i >= 28 or (i - 4) % 3 == 2]
    assert len(more) == 16
    assert q6 == sorted([f"model.layers.{i}.self_attn.v_proj" for i in more] + [
        f"model.layers.{i}.mlp.down_proj" for i in more] + ["lm_head"])
    assert types["model.embed_tokens"] == "q4_k" and set(types.values()) == {"q4_k", "q6_k"}
    norms = sk.total_params - sum(i.params for i in sk.layers if i.tied_to is None)
    # the model sizes llama.cpp prints for this model's files (GiB, bits per weight)
    for preset, (gib, bpw) in {"q4_k_m": (4.58, 4.89), "q5_k_m": (5.33, 5.70), "q6_k": (6.14, 6.56),
                               "q8_0": (7.95, 8.50)}.items():
        total = predict(sk, preset_recipe(preset, sk.layers, sk.config)).compressed_bytes + 2 * norms  # norms f32
        assert round(total / 2**30, 2) == gib and round(8 * total / sk.total_params, 2) == bpw, preset


def test_smollm2_mixes_fall_back_where_576_does_not_divide():
    sk = open_skeleton("smollm2")
    types = layer_types("q4_k_m", sk.layers, sk.config)
    assert types["model.embed_tokens"] == "q8_0"  # tied to the head: the head's type, 576 % 256 -> q8_0
    report = predict(sk, preset_recipe("q4_k_m", sk.layers, sk.config))
    formats = {r.info.name: r.bytes.format for r in report.layers if r.compressed}
    assert formats["model.layers.0.self_attn.q_proj"] == "q5_0"  # q4_k on rows of 576: llama.cpp's fallback
    assert formats["model.layers.0.mlp.down_proj"] == "q6_k" and formats["model.layers.3.mlp.down_proj"] == "q4_k"
    q2 = layer_types("q2_k", sk.layers, sk.config)  # 9 heads over 3 KV heads: V in q3_k
    assert q2["model.layers.4.self_attn.v_proj"] == "q3_k" and q2["model.layers.4.self_attn.o_proj"] == "q3_k"


def test_run_minilm_with_a_mix_end_to_end():
    """The real model through the command line: each layer in llama.cpp's type for it (rows of
    384 values fall back from q4_k to q5_0, from q6_k to q8_0), the bytes the shapes predict."""
    import json

    from cli_harness import main

    code, out, err = main("run", "minilm", "--preset", "q4_k_m", "--quick", "--json")
    assert code == 0, err
    report = json.loads(out)
    formats = {layer["name"]: layer["format"] for layer in report["memory"]["layers"] if layer["compressed"]}
    assert formats["encoder.layer.0.attention.self.query"] == "q5_0"
    assert formats["encoder.layer.0.output.dense"] == "q4_k" and formats["encoder.layer.2.output.dense"] == "q6_k"
    assert formats["encoder.layer.2.attention.self.value"] == "q8_0"  # q6_k on rows of 384: q8_0
    assert formats["embeddings.word_embeddings"] == "q8_0"
    sk = open_skeleton("minilm")
    assert report["memory"]["compressed_bytes"] == predict(sk, preset_recipe("q4_k_m", sk.layers, sk.config)).compressed_bytes
    assert 0.9 < report["metrics"]["cosine_to_original"] < 1
    code, text, _ = main("run", "minilm", "--preset", "q4_k_m", "--quant-method", "imatrix", "--quick")
    assert code == 0 and "llama.cpp's Q4_K: 4.5 bits per value" in text and "Q4_K imatrix · with embeddings" in text


def test_a_mix_exports_as_gguf_blocks_and_reloads_exactly(minilm_explorer, tmp_path):
    from engine.storage import explorer_format as export

    work = minilm_explorer.workspace()
    work.apply(minilm_explorer.preset("q4_k_m"))
    manifest = export.write(work, tmp_path / "out", entropy=True)  # llama.cpp's blocks are written as they are
    assert manifest["tensor_bytes"] == manifest["predicted_bytes"] == work.applied.memory.compressed_bytes
    formats = {p["format"] for layer in manifest["layers"] for p in layer["parts"]}
    assert formats == {"q4_k", "q6_k", "q5_0", "q8_0"}  # rows of 384 fall back, rows of 1,536 do not
    again = minilm_explorer.workspace()
    export.load_into(again, tmp_path / "out")
    for name, stored in work.stored.items():
        back = again.stored[name].matrices[0]
        assert torch.equal(back.values, stored.matrices[0].values) and back.grid.ggml == stored.matrices[0].grid.ggml
    assert again.evaluate(quick=True) == work.evaluate(quick=True)
