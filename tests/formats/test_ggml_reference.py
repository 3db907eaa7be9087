"""engine/formats/ggml's k-quant and importance-weighted quantizers against llama.cpp's own output.

tests/fixtures/ggml_reference.npz holds the bytes libggml's ggml_quantize_chunk wrote for a 6 x 1536
Gaussian with outliers, 8 x 1536 of all-MiniLM-L6-v2's FFN output weight and 8 x 512 special cases
(zero, constant, tiny, tied and signed-zero rows), for q2_k ... q6_k without and with an importance
vector and for q4_0 ... q5_1 with it; it is made by
tests/make_ggml_reference.py (run by hand, needs llama_cpp). Our bytes match them exactly: the
port reproduces C's float32 evaluation order (sequential sums, same products, fp16 rounding), so
no tolerance is needed.
"""
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from engine.formats.ggml import kquants, weighted

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ggml_reference.npz"
K_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
LEGACY_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1")
INPUTS = ("gauss", "minilm")  # real-valued inputs; "edge" holds zero / constant / tiny / tied rows
CASES = [(name, fmt, mode) for name in INPUTS + ("edge",) for fmt in K_TYPES for mode in ("plain", "imatrix")] + \
        [(name, fmt, "imatrix") for name in INPUTS + ("edge",) for fmt in LEGACY_TYPES]


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


def _quantize(w: torch.Tensor, fmt: str, importance: torch.Tensor | None):
    module = kquants if fmt in K_TYPES else weighted
    return module.quantize(w, fmt, importance)


@pytest.fixture(scope="module")
def ours(ref):
    """Our (values, raw) for every recorded case."""
    imp = torch.from_numpy(ref["importance"])
    out = {}
    for name, fmt, mode in CASES:
        w = torch.from_numpy(ref[f"{name}/input"])
        out[name, fmt, mode] = _quantize(w, fmt, imp[:w.shape[1]] if mode == "imatrix" else None)
    return out


@pytest.mark.parametrize("name,fmt,mode", CASES)
def test_bytes_match_llama_cpp(ref, ours, name, fmt, mode):
    values, raw = ours[name, fmt, mode]
    expected = ref[f"{name}/{fmt}/{mode}"]
    kind = gguf.GGMLQuantizationType[fmt.upper()]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    rows, cols = ref[f"{name}/input"].shape
    assert raw.dtype == torch.uint8 and raw.shape == (rows, cols // block * size) == expected.shape
    blocks_equal = (raw.numpy().reshape(-1, size) == expected.reshape(-1, size)).all(axis=1)
    assert blocks_equal.all(), f"{(~blocks_equal).sum()} of {blocks_equal.size} blocks differ"
    # values are exactly what the reference dequantizer reads from the bytes
    assert values.dtype == torch.float32 and values.shape == (rows, cols)
    np.testing.assert_array_equal(gguf.quants.dequantize(raw.numpy(), kind).reshape(rows, cols), values.numpy())


def test_error_falls_with_bits(ref):
    w = torch.from_numpy(ref["gauss/input"])
    rel = [((kquants.quantize(w, fmt)[0] - w).norm() / w.norm()).item() for fmt in K_TYPES]
    assert rel == sorted(rel, reverse=True) and len(set(rel)) == len(rel), rel
    assert rel[0] < 0.4 and rel[-1] < 0.03


@pytest.mark.parametrize("fmt", K_TYPES + LEGACY_TYPES)
def test_importance_lowers_weighted_error(ref, fmt):
    imp = torch.from_numpy(ref["importance"])
    for name in INPUTS:
        w = torch.from_numpy(ref[f"{name}/input"])
        plain = _quantize(w, fmt, None)[0]  # legacy types: llama.cpp's round-to-nearest
        weighted_ = _quantize(w, fmt, imp)[0]
        err_plain = ((plain - w) ** 2 * imp).sum()
        err_weighted = ((weighted_ - w) ** 2 * imp).sum()
        assert err_weighted < err_plain, (name, err_weighted.item(), err_plain.item())


def test_shapes_are_checked():
    with pytest.raises(ValueError):
        kquants.quantize(torch.randn(4, 384), "q4_k")
    with pytest.raises(ValueError):
        kquants.quantize(torch.randn(4, 384), "q6_k", torch.ones(384))
    with pytest.raises(ValueError):
        weighted.quantize(torch.randn(4, 48), "q4_0", torch.ones(48))
    with pytest.raises(ValueError):
        kquants.quantize(torch.randn(4, 512), "q4_k", torch.ones(256))  # importance is one per column
