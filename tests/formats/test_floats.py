"""The float formats (nf4, fp4, fp8_e4m3, fp8_e5m2, nvfp4, double quantization): values on each
format's grid against the references (compressed-tensors, torch's float8 dtypes, bitsandbytes'
table and layout), bytes by hand count, the invariants between them, the recipe's refusals, and
one layer through the pipeline, the packed export, GGUF's refusal and the app's control."""
import contextlib
import io

import pytest
import torch

from engine import cli
from engine.errors import UserError
from engine.formats import floats
from engine.formats.bytes import float_bytes
from engine.formats.floats import blockwise, scaled
from engine.recipe.recipe import Recipe
from engine.storage import codec, gguf_file
from engine.storage import explorer_format as export


def weights(rows=32, cols=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.logspace(-3, 1, rows)[:, None]  # four decades of scale
    w[2, :16] = 0  # an all-zero block
    w[5, 7] = 60.0  # an outlier
    return w


def gaussian(seed=1):
    return torch.randn(256, 512, generator=torch.Generator().manual_seed(seed))


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_nvfp4_equals_compressed_tensors_byte_for_byte():
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = PRESET_SCHEMES["NVFP4A16"]["weights"]
    for w in (weights(), gaussian()[:64]):
        gs = generate_gparam(w.min().reshape(1), w.max().reshape(1))
        blocks = w.reshape(w.shape[0], -1, 16)
        scale, zp = calculate_qparams(blocks.amin(-1), blocks.amax(-1), args, global_scale=gs)
        q = quantize(w, scale, zp, args, global_scale=gs)
        values, parts = floats.quantize(w, "nvfp4")
        assert torch.equal(parts["global_scale"], gs)
        assert torch.equal(parts["scales"].view(torch.float8_e4m3fn).float(), scale.float())
        assert torch.equal(parts["codes"], pack_fp4_to_uint8(q))
        assert torch.equal(values, dequantize(q, scale, zp, args, global_scale=gs).float())
        # every value is an E2M1 value times its block's E4M3 scale (positive, finite) over the global scale
        e4m3 = parts["scales"].view(torch.float8_e4m3fn).float()
        assert torch.isfinite(e4m3).all() and (e4m3 > 0).all() and e4m3.max() <= 448
        codes = blockwise.unpack(parts["codes"], high_first=False).reshape(w.shape[0], -1, 16)
        e2m1 = blockwise.e2m1_value(codes)
        assert set(e2m1.abs().flatten().tolist()) <= set(blockwise.E2M1)
        assert torch.equal(values, (e2m1 * (e4m3 / gs)[..., None]).reshape(w.shape))
        assert torch.equal(values, scaled.nvfp4_values(parts, w.shape))


def test_fp8_is_torchs_float8_cast_per_channel_and_equals_compressed_tensors():
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    w = weights()
    w[3] = 0  # a zero row: scale fp32's epsilon, values 0
    for fmt, dtype, top in (("fp8_e4m3", torch.float8_e4m3fn, 448.0), ("fp8_e5m2", torch.float8_e5m2, 57344.0)):
        values, parts = floats.quantize(w, fmt)
        scale = parts["scales"]
        assert torch.equal(scale[[0, 4]], w[[0, 4]].abs().amax(1) / top)
        reference = (w / scale[:, None]).clamp(-top, top).to(dtype)  # round to nearest even
        assert torch.equal(parts["codes"], reference.view(torch.uint8))
        assert torch.equal(values, reference.float() * scale[:, None]) and not values[3].any()
    args = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
    scale, zp = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), args)
    _, parts = floats.quantize(w, "fp8_e4m3")
    assert torch.equal(parts["scales"], scale.flatten())
    assert torch.equal(parts["codes"].view(torch.float8_e4m3fn), quantize(w, scale, zp, args).to(torch.float8_e4m3fn))


def test_nf4_and_fp4_take_the_nearest_level_of_each_64_value_block_packed_high_half_first():
    nf4 = torch.tensor(blockwise.NF4)
    assert len(nf4) == 16 and torch.equal(nf4, nf4.sort().values) and nf4[7] == 0 and nf4[0] == -1 and nf4[-1] == 1
    w = weights(8, 100)  # 800 values: 12 full blocks of 64 and one of 32, across rows (bitsandbytes)
    for fmt in ("nf4", "fp4"):
        values, parts = floats.quantize(w, fmt)
        table = blockwise.levels(fmt)
        flat = torch.cat([w.flatten(), torch.zeros(32)]).reshape(-1, 64)
        absmax = flat.abs().amax(1)
        assert torch.equal(parts["absmax"], absmax)
        x = flat / torch.where(absmax > 0, absmax, 1)[:, None]
        codes = blockwise.unpack(parts["codes"], high_first=True)
        assert torch.equal(table[codes.long()], table[(x.flatten()[:800, None] - table).abs().argmin(1)])  # nearest
        assert torch.equal(values.flatten(), table[codes.long()] * absmax.repeat_interleave(64)[:800])
    # hand-made block: -1, 1, 0 and 0.5 of its absmax; NF4 codes 0, 15, 7, 12 -> bytes 0x0f, 0x7c
    w = torch.tensor([[-2.0, 2.0, 0.0, 1.0]])
    values, parts = floats.quantize(w, "nf4")
    assert parts["codes"].tolist() == [0x0F, 0x7C] and parts["absmax"].tolist() == [2.0]
    assert values.tolist() == [[-2.0, 2.0, 0.0, 2 * blockwise.NF4[12]]]
    _, parts = floats.quantize(w * 3, "fp4")  # E2M1 codes of -6, 6, 0, 3: 0xf, 0x7, 0x0, 0x5
    assert parts["codes"].tolist() == [0xF7, 0x05]


def test_bytes_by_hand_count_and_as_stored():
    assert float_bytes(3, 100, "nf4").total == 150 + 4 * 5  # 300 codes of 4 bits, ceil(300 / 64) = 5 fp32 absmax
    assert float_bytes(3, 100, "fp4", double_quant=True).total == 150 + 5 + 4 + 4  # 5 int8, 1 fp32 scale, the mean
    assert float_bytes(3, 100, "fp8_e4m3").total == float_bytes(3, 100, "fp8_e5m2").total == 300 + 3 * 4
    assert float_bytes(3, 32, "nvfp4").total == 48 + 6 + 4  # 2 E4M3 scales a row, one fp32 global scale
    assert float_bytes(3, 100, None).total == 600  # nvfp4 rows of 100: fp16
    assert floats.fit("nvfp4", 100) is None and floats.fit("nf4", 100) == "nf4"
    n = 64 * 256 * 4  # QLoRA's count: 4 + 8/64 + 32/(64 x 256) bits a value, + 4 bytes
    assert 8 * (float_bytes(64, n // 64, "nf4", True).total - 4) == n * (4 + 8 / 64 + 32 / (64 * 256))
    assert floats.TYPES["nf4"].bits_per_value == floats.TYPES["nvfp4"].bits_per_value == 4.5
    for fmt in floats.TYPES:
        for dq in (False, True) if fmt in floats.DOUBLE_QUANT else (False,):
            _, parts = floats.quantize(weights(8, 96), fmt, dq)
            assert codec.nbytes(parts) == float_bytes(8, 96, fmt, dq).total


def test_error_orders_on_gaussian_weights_and_double_quant_costs_little():
    w = gaussian()
    err = {f: rel(floats.quantize(w, f)[0], w) for f in floats.TYPES}
    assert err["nf4"] < err["fp4"]  # NF4's levels follow a normal distribution
    assert err["fp8_e4m3"] < err["fp8_e5m2"] < err["nf4"]  # a mantissa bit more, then 8 bits against 4
    for fmt in ("nf4", "fp4"):
        values, parts = floats.quantize(w, fmt, double_quant=True)
        assert torch.equal(values, floats.dequantize(parts, fmt, w.shape, True))
        assert err[fmt] <= rel(values, w) < 1.01 * err[fmt]  # under 1% more error
        absmax = w.reshape(-1, 64).abs().amax(1)
        stored = blockwise.stored_scales(parts)
        step = parts["absmax_scales"].repeat_interleave(256)[:absmax.numel()]
        assert ((stored - absmax).abs() <= step / 2 * (1 + 1e-5) + 1e-6).all()  # within half an 8-bit step
        assert codec.nbytes(parts) < codec.nbytes(floats.quantize(w, fmt)[1])


def test_the_recipe_sets_each_format_and_refuses_what_it_cannot_hold():
    assert (Recipe(number_format="nf4").bits, Recipe(number_format="nf4").group_size) == (4, 64)
    fp8 = Recipe(number_format="fp8_e4m3")
    assert (fp8.bits, fp8.granularity) == (8, "channel") and Recipe(number_format="nvfp4").group_size == 16
    assert Recipe(number_format="fp4", double_quant=True).describe() == "FP4 double-quant"
    for bad, field in ((dict(number_format="fp8_e4m3", double_quant=True), "double_quant"),
                       (dict(double_quant=True), "double_quant"),
                       (dict(number_format="nf4", quant_method="gptq"), "quant_method"),
                       (dict(number_format="nvfp4", quant_method="imatrix"), "quant_method"),
                       (dict(number_format="fp4", quant_method="kmeans"), "quant_method"),
                       (dict(number_format="nf4", rank_ratio=0.5), "number_format"),
                       (dict(number_format="nf4", sparsity=0.5), "number_format"),
                       (dict(number_format="nf4", distill_steps=4), "distill_steps"),
                       (dict(number_format="nf4", bits=8), "bits")):
        with pytest.raises(UserError, match=f"^{field}: "):
            Recipe(**bad)
    r = Recipe(number_format="nf4", double_quant=True)
    assert r.updated(number_format="fp8_e5m2").double_quant is False  # dropped where it does not apply
    assert r.updated(number_format="fp4").double_quant is True
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["run", "minilm", "--number-format", "nvfp4", "--double-quant"])
    assert code == 2 and err.getvalue().count("\n") == 1 and "double_quant" in err.getvalue()


def test_minilm_in_each_format_counts_exports_and_reads_back_exactly(minilm_explorer, tmp_path):
    from engine.pipeline.compress import predict

    ex = minilm_explorer
    work = ex.workspace()
    name = "encoder.layer.0.attention.self.query"
    info = next(i for i in ex.layers if i.name == name)
    for fmt, dq, total in (("nf4", True, 384 * 384 // 2 + 2304 + 4 * 9 + 4), ("fp8_e5m2", False, 384 * 384 + 4 * 384),
                           ("nvfp4", False, 384 * 384 // 2 + 384 * 384 // 16 + 4)):
        work.apply(Recipe(number_format=fmt, double_quant=dq, layers=r"^encoder\.layer\.0\."))
        stored = work.stored[name]
        assert stored.bytes.compressed_bytes == predict(info, stored.recipe).bytes.compressed_bytes == total
        tensors, parts = codec.encode_layer(stored)
        assert codec.nbytes(tensors) == total
    export.write(work, tmp_path / "out")  # the last, nvfp4: written and read back with identical values
    again = ex.workspace()
    applied = export.load_into(again, tmp_path / "out")
    assert applied.memory.compressed_bytes == work.applied.memory.compressed_bytes
    for n, stored in work.stored.items():
        assert torch.equal(again.stored[n].matrix(), stored.matrix())
    # GGUF has no such type: refused in one line naming the format
    assert gguf_file.tensor_type(work.stored[name]) == (None, "nvfp4 (no GGUF type holds it)")


def test_the_apps_number_format_control_lists_the_float_formats_with_a_line_each(tiny_models):
    from app_harness import ok, recipe_caption, start
    from engine.glossary import FORMAT_NOTES
    from ui.controls import FORMAT_LABELS

    at = ok(start(model=tiny_models["llama"], format="nf4", dq="true"))
    labels = [FORMAT_LABELS[f] for f in floats.TYPES]
    assert labels[0] == "NF4 (4.5 bits/value)" and set(labels) <= set(at.selectbox(key="ctl_format").options)
    assert recipe_caption(at) == "NF4 double-quant" and at.toggle(key="ctl_dq").value
    assert FORMAT_NOTES["nf4"] in " ".join(c.value for c in at.sidebar.caption)
    at.selectbox(key="ctl_format").set_value("fp8_e4m3")
    ok(at.run())  # double quantization is dropped (its toggle hidden), the scales are per channel
    assert recipe_caption(at) == "FP8_E4M3" and "dq" not in at.query_params
    assert at.selectbox(key="ctl_granularity").value == "channel"
    assert FORMAT_NOTES["fp8_e4m3"] in " ".join(c.value for c in at.sidebar.caption)


def test_fp8_and_nvfp4_go_into_a_compressed_tensors_folder_transformers_loads(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.drivers.explorer import Explorer
    from engine.storage import ct_file

    ex = Explorer.open(tiny_models["llama"])
    ids = torch.tensor([[101, 2054, 2003, 1996, 3007, 102]])
    for fmt, dtype in (("fp8_e4m3", torch.float32), ("nvfp4", torch.bfloat16)):
        work = ex.workspace()
        work.apply(Recipe(number_format=fmt))
        report = ct_file.write(work, tmp_path / fmt)
        assert report["written_bytes"] == report["predicted_bytes"] > 0 and report["dense_fallback"] == 0
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path / fmt), dtype=dtype)
        with torch.inference_mode():
            logits = model(ids).logits  # compressed-tensors decompresses on the first forward
            if fmt == "fp8_e4m3":
                assert torch.equal(logits, work.model(ids).logits)
        for name, stored in work.stored.items():  # nvfp4 decompresses to bf16: our values rounded to it
            assert torch.equal(model.get_submodule(name).weight.float(), stored.matrix().to(dtype).float())
        again = ex.workspace()  # `run FOLDER`: the explorer reads its own values back
        assert ct_file.load_into(again, tmp_path / fmt).memory.compressed_bytes == work.applied.memory.compressed_bytes
        assert all(torch.equal(again.stored[n].matrix(), s.matrix()) for n, s in work.stored.items())
    with pytest.raises(UserError, match="nf4"):
        work.apply(Recipe(number_format="nf4"))
        ct_file.write(work, tmp_path / "nf4")
