"""The low-bit float formats other tools ship: NF4 and FP4 (bitsandbytes / QLoRA), FP8 E4M3 and
E5M2 (per output channel, compressed-tensors' float8 "channel" scheme) and NVFP4 (NVIDIA's
16-value blocks with E4M3 scales, compressed-tensors' "nvfp4-pack-quantized").

Each format is a pure function of a (rows, cols) matrix: its values, as the model computes with
them, and the tensors that store them (`parts`: codes, scales), whose bytes are exactly
`TYPES[fmt].bytes(rows, cols)`:

    values, parts = quantize(w, "nf4", double_quant=True)
    dequantize(parts, "nf4", w.shape, True)         # the same values, from the parts alone
    TYPES["nvfp4"].bits_per_value                   # 4.5 (+ 4 bytes per tensor)

    nf4       16 NF4 levels x absmax    blocks of 64 (flat)  fp32 absmax           4.5 bits
    fp4       E2M1 levels x absmax / 6  blocks of 64 (flat)  fp32 absmax           4.5 bits
    + double_quant: the absmax values minus their mean (fp32), as 8-bit codes with one fp32 scale
      per 256 of them: 4 + 8/64 + 32/16384 bits, + 4 bytes per tensor
    fp8_e4m3  torch.float8_e4m3fn       one row              fp32 absmax / 448     8 bits (+ 4 B a row)
    fp8_e5m2  torch.float8_e5m2         one row              fp32 absmax / 57344   8 bits (+ 4 B a row)
    nvfp4     E2M1                      blocks of 16 (row)   E4M3, and fp32 per tensor  4.5 bits (+ 4 B)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.formats.floats import blockwise, scaled


@dataclass(frozen=True)
class FloatType:
    """One format: `bits` per code, in blocks of `block` values (None: one scale per output row)."""

    name: str
    bits: int
    block: int | None
    flat: bool  # blocks run over the flattened matrix (bitsandbytes), not within rows
    help: str

    @property
    def bits_per_value(self) -> float:
        """Codes and block scales, per value (without per-row or per-tensor scales)."""
        return self.bits + {"nf4": 32, "fp4": 32, "nvfp4": 8}.get(self.name, 0) / (self.block or 1)

    def fits(self, cols: int) -> bool:
        return self.flat or self.block is None or cols % self.block == 0

    def bytes(self, rows: int, cols: int, double_quant: bool = False) -> tuple[int, int]:
        """(bytes of the codes, bytes of every scale) of a (rows, cols) matrix, which `fits`."""
        n = rows * cols
        codes = math.ceil(n * self.bits / 8)
        if self.flat:  # bitsandbytes: blocks of 64 over the flattened tensor, the last one partial
            blocks = math.ceil(n / self.block)
            if double_quant:  # 8-bit codes, an fp32 scale per 256 of them, the fp32 mean
                return codes, blocks + 4 * math.ceil(blocks / blockwise.DQ_BLOCK) + 4
            return codes, 4 * blocks
        if self.block is None:  # fp8: one fp32 scale per row
            return codes, 4 * rows
        return codes, n // self.block + 4  # nvfp4: an E4M3 byte per 16 values, the fp32 global scale


TYPES = {t.name: t for t in (
    FloatType("nf4", 4, 64, True, "QLoRA's 4-bit NormalFloat: 16 levels at the quantiles of a normal distribution, "
                                  "x an fp32 absmax per 64 values (bitsandbytes)"),
    FloatType("fp4", 4, 64, True, "4-bit E2M1 floats (0, 0.5 ... 6) x an fp32 absmax / 6 per 64 values "
                                  "(bitsandbytes' 4-bit layout)"),
    FloatType("fp8_e4m3", 8, None, False, "8-bit floats E4M3 (to 448, 3 mantissa bits) x an fp32 scale per output "
                                          "channel (compressed-tensors' FP8, vLLM)"),
    FloatType("fp8_e5m2", 8, None, False, "8-bit floats E5M2 (to 57344, 2 mantissa bits) x an fp32 scale per output "
                                          "channel"),
    FloatType("nvfp4", 4, 16, False, "4-bit E2M1 floats x an E4M3 scale per 16 values x one fp32 scale per tensor "
                                     "(NVIDIA Blackwell, compressed-tensors' NVFP4)"),
)}
DOUBLE_QUANT = ("nf4", "fp4")  # the formats whose block scales may be double-quantized


def label(fmt: str, double_quant: bool) -> str:
    """The stored format's name in byte counts and exports: 'nf4', 'nf4-dq', 'fp8_e4m3', ..."""
    return fmt + ("-dq" if double_quant and fmt in DOUBLE_QUANT else "")


def parse(stored: str) -> tuple[str, bool] | None:
    """label's inverse: (format, double_quant), or None for a name that is not one of these."""
    fmt, dq = stored.removesuffix("-dq"), stored.endswith("-dq")
    return (fmt, dq) if fmt in TYPES and (not dq or fmt in DOUBLE_QUANT) else None


def fit(fmt: str, cols: int) -> str | None:
    """`fmt` when it can hold rows of `cols` values, else None (the rows then stay fp16)."""
    return fmt if TYPES[fmt].fits(cols) else None


def quantize(w: torch.Tensor, fmt: str, double_quant: bool = False) -> tuple[torch.Tensor, dict]:
    """(values (rows, cols) float32, parts: the tensors that store them) of `w` in `fmt`."""
    w = w.detach().float()
    if fmt in DOUBLE_QUANT:
        return blockwise.quantize(w, fmt, double_quant)
    if fmt == "nvfp4":
        return scaled.nvfp4(w)
    return scaled.fp8(w, fmt)


def dequantize(parts: dict, fmt: str, shape: tuple[int, int], double_quant: bool = False) -> torch.Tensor:
    """The (rows, cols) float32 values that `parts` (as `quantize` gave them) store."""
    if fmt in DOUBLE_QUANT:
        return blockwise.dequantize(parts, fmt, shape, double_quant)
    if fmt == "nvfp4":
        return scaled.nvfp4_values(parts, shape)
    return scaled.fp8_values(parts, fmt)
