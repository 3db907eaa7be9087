"""Record llama.cpp's own quantizer output as a test fixture (run by hand; needs llama_cpp).

    .venv/bin/python tests/make_ggml_reference.py      # writes tests/fixtures/ggml_reference.npz

Calls libggml-base's public `ggml_quantize_chunk(type, src, dst, start, nrows, n_per_row,
imatrix)` through ctypes on fixed inputs and stores the raw GGUF block bytes it writes:

- inputs: "gauss" (6 x 1536, seeded Gaussian with a few large outliers), "minilm" (8 rows x
  1536 cols of all-MiniLM-L6-v2's encoder.layer.0.output.dense.weight, the FFN output projection)
  and "edge" (8 x 512 special cases: zero, constant, tiny, tied values);
- one importance vector (1536,), seeded, positive, with a few large entries (its first 512 for
  "edge");
- for q2_k ... q6_k: raw bytes without and with the importance vector ("<input>/<type>/plain",
  "<input>/<type>/imatrix"); for q4_0, q4_1, q5_0, q5_1: with it ("<input>/<type>/imatrix").

tests/formats/test_ggml_reference.py checks engine/formats/ggml's quantizers against these bytes.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

K_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
LEGACY_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1")
FIXTURE = Path(__file__).parent / "fixtures" / "ggml_reference.npz"


def _library() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


_LIB = None


def ggml_quantize(x: np.ndarray, fmt: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """llama.cpp's quantization of the (rows, cols) float32 matrix x to type fmt ("q4_k", ...):
    (rows, row bytes) uint8, exactly as ggml_quantize_chunk writes it."""
    import gguf

    global _LIB
    if _LIB is None:
        _LIB = _library()
    kind = gguf.GGMLQuantizationType[fmt.upper()]
    block, size = gguf.GGML_QUANT_SIZES[kind]
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    out = np.zeros((rows, cols // block * size), dtype=np.uint8)
    qw = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    _LIB.ggml_quantize_init(int(kind))
    written = _LIB.ggml_quantize_chunk(int(kind), x.ctypes.data, out.ctypes.data, 0, rows, cols,
                                       None if qw is None else qw.ctypes.data)
    assert written == out.size, (written, out.size)
    return out


def inputs() -> dict[str, np.ndarray]:
    """The fixed inputs: {"gauss": (6, 1536), "minilm": (8, 1536), "edge": (8, 512)} float32."""
    rng = np.random.default_rng(1234)
    gauss = rng.standard_normal((6, 1536)).astype(np.float32)
    spots = rng.choice(gauss.size, size=10, replace=False)
    gauss.reshape(-1)[spots] *= np.float32(12.0)  # a few large outliers
    from safetensors.numpy import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for engine
    from engine.models.loading import minilm_path

    weight = load_file(str(minilm_path() / "model.safetensors"))["encoder.layer.0.output.dense.weight"]
    minilm = np.ascontiguousarray(weight[:8, :1536], dtype=np.float32)
    return {"gauss": gauss, "minilm": minilm, "edge": edge_cases()}


def edge_cases() -> np.ndarray:
    """(8, 512) rows that exercise the quantizers' special cases: all zero, constant, a constant
    half with a spike, integers (rounding ties), tiny values (below GROUP_MAX_EPS = 1e-15),
    all positive, signed zeros, large values."""
    j = np.arange(512)
    x = np.zeros((8, 512), dtype=np.float32)
    x[1] = 0.5
    x[2, :256], x[2, 300] = -2.0, 3.0
    x[3] = j % 7 - 3
    x[4] = 1e-18 * ((j * 37) % 11 - 5)
    x[5] = (j % 13) * 0.1 + 0.05
    x[6] = np.where(j % 2 == 0, -0.0, 1.0)
    x[7] = 1e4 * ((j * 17) % 19 - 9)
    return x


def importance(cols: int = 1536) -> np.ndarray:
    """A seeded positive importance vector (cols,) with a few large entries (an imatrix's shape)."""
    rng = np.random.default_rng(99)
    imp = rng.gamma(2.0, 0.5, size=cols).astype(np.float32) + np.float32(0.01)
    imp[rng.choice(cols, size=8, replace=False)] *= np.float32(50.0)
    return imp


def main() -> None:
    imp = importance()
    data: dict[str, np.ndarray] = {"importance": imp}
    for name, x in inputs().items():
        data[f"{name}/input"] = x
        qw = imp[:x.shape[1]]
        for fmt in K_TYPES:
            data[f"{name}/{fmt}/plain"] = ggml_quantize(x, fmt)
            data[f"{name}/{fmt}/imatrix"] = ggml_quantize(x, fmt, qw)
        for fmt in LEGACY_TYPES:
            data[f"{name}/{fmt}/imatrix"] = ggml_quantize(x, fmt, qw)
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **data)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size / 1024:.0f} KB, {len(data)} arrays)")


if __name__ == "__main__":
    main()
