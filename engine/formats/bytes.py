"""Bytes, exactly as a compressed matrix would be stored.

Conventions (every figure the explorer shows follows them):
- an uncompressed value takes 16 bits (2 bytes);
- b-bit values are packed: ceil(count x b / 8) bytes per tensor;
- each quantization group has one fp16 scale (2 bytes), and when asymmetric one b-bit
  zero-point (packed like the values); a group is a row for per-channel, the whole tensor
  for per-tensor;
- a sparse tensor takes the cheapest of: dense (zeros stored as values), bitmask (one bit per
  position + the kept values), CSR (kept values + an int32 column index per kept value +
  int32 row pointers), and for an N:M pattern, N:M (kept values + ceil(log2 M) bits of
  index per kept value);
- AWQ also stores one fp16 scale per input column of each matrix (its channel scales), counted
  with the scales;
- weight sharing (k-means) stores b-bit indices in place of the codes and one codebook of
  2^b fp16 values per matrix in place of the scales; a pruned entry has no code, so a pruned
  k-means matrix is never stored dense;
- a llama.cpp type (engine.formats.ggml) stores its blocks as llama.cpp does: rows x cols / block x
  the block's bytes (codes, then the block's scales and minimums); a row its type's blocks
  do not divide takes the fallback type (engine.formats.ggml.fit), or fp16 ('f16') when none fits;
- a float format (engine.formats.floats) stores its codes packed (4 or 8 bits a value) and its scales
  at their own widths: nf4 / fp4 an fp32 absmax per 64 values of the flattened matrix (with
  double quantization instead an 8-bit code per 64 values, an fp32 scale per 256 codes and one
  fp32 mean), fp8 an fp32 scale per row, nvfp4 an E4M3 byte per 16 values of a row and one fp32
  global scale; nvfp4 rows of other than a multiple of 16 values take fp16 ('f16');
- a low-rank layer stores its factors A (out, r) and B (r, in), each counted by these rules;
  layers that share one basis B (engine.methods.shared) store it once, counted with the first layer
  of their group (the others' B: 0 bytes, format 'shared');
- everything not compressed (embeddings, norms, biases) takes 2 bytes per parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

VALUE_BITS_UNCOMPRESSED = 16


@dataclass(frozen=True)
class TensorBytes:
    """The bytes of one stored matrix, by component."""

    values: int  # the stored values (b-bit codes, or 16-bit)
    scales: int  # fp16 scales and b-bit zero-points
    index: int  # bitmask, CSR indices and row pointers, or N:M metadata
    format: str  # 'dense' | 'bitmask' | 'csr' | 'N:M'

    @property
    def total(self) -> int:
        return self.values + self.scales + self.index


def _packed(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def quant_groups(rows: int, cols: int, granularity: str, group_size: int) -> int:
    """How many scales a (rows, cols) matrix has under a granularity."""
    if granularity == "tensor":
        return 1
    if granularity == "channel":
        return rows
    return rows * math.ceil(cols / min(group_size, cols))


def tensor_bytes(
    rows: int,
    cols: int,
    kept: int,
    bits: int = 16,
    granularity: str = "group",
    group_size: int = 128,
    symmetric: bool = True,
    nm: tuple[int, int] | None = None,
    codebook: bool = False,
    channel_scales: bool = False,
) -> TensorBytes:
    """Bytes of a (rows, cols) matrix with `kept` non-pruned values (`codebook`: k-means
    weight sharing, indices into 2^bits fp16 values, instead of scaled integer codes;
    `channel_scales`: AWQ's fp16 scale per input column, counted with the scales).

    >>> tensor_bytes(4, 8, kept=32, bits=4, granularity="channel")  # 16 B codes + 4 fp16 scales
    TensorBytes(values=16, scales=8, index=0, format='dense')
    """
    n = rows * cols
    quantized = bits < VALUE_BITS_UNCOMPRESSED
    scales = 0
    if quantized and codebook:
        scales = 2 * 2**bits
    elif quantized:
        groups = quant_groups(rows, cols, granularity, group_size)
        scales = 2 * groups + (0 if symmetric else _packed(groups, bits))
        scales += 2 * cols if channel_scales else 0
    candidates = [] if codebook and quantized and kept < n else [TensorBytes(_packed(n, bits), scales, 0, "dense")]
    if kept < n:
        kv = _packed(kept, bits)
        if nm is not None:
            index_bits = math.ceil(math.log2(nm[1]))
            candidates.append(TensorBytes(kv, scales, _packed(kept, index_bits), f"{nm[0]}:{nm[1]}"))
        candidates.append(TensorBytes(kv, scales, _packed(n, 1), "bitmask"))
        candidates.append(TensorBytes(kv, scales, 4 * kept + 4 * (rows + 1), "csr"))
    # the first wins a tie: dense, then N:M (2:4 and a bitmask are the same size), then the rest
    return min(candidates, key=lambda c: c.total)


def ggml_bytes(rows: int, cols: int, fmt: str | None) -> TensorBytes:
    """A (rows, cols) matrix in llama.cpp's type `fmt` (None: fp16), whose blocks divide its rows.

    >>> ggml_bytes(2, 256, "q4_k")  # 2 super-blocks of 144 B: 128 B of 4-bit codes, 16 B of scales
    TensorBytes(values=256, scales=32, index=0, format='q4_k')
    """
    from engine.formats.ggml import TYPES

    if fmt is None:
        return TensorBytes(2 * rows * cols, 0, 0, "f16")
    t = TYPES[fmt]
    total = rows * t.row_bytes(cols)
    codes = rows * cols * t.bits // 8
    return TensorBytes(codes, total - codes, 0, fmt)


def float_bytes(rows: int, cols: int, fmt: str | None, double_quant: bool = False) -> TensorBytes:
    """A (rows, cols) matrix in float format `fmt` (engine.formats.floats; None: fp16).

    >>> float_bytes(4, 128, "nf4")  # 256 B of 4-bit codes, 8 blocks of 64 with an fp32 absmax each
    TensorBytes(values=256, scales=32, index=0, format='nf4')
    >>> float_bytes(4, 128, "nvfp4")  # 32 E4M3 block scales and the fp32 global scale
    TensorBytes(values=256, scales=36, index=0, format='nvfp4')
    """
    from engine.formats import floats

    if fmt is None:
        return TensorBytes(2 * rows * cols, 0, 0, "f16")
    codes, scales = floats.TYPES[fmt].bytes(rows, cols, double_quant)
    return TensorBytes(codes, scales, 0, floats.label(fmt, double_quant))


@dataclass(frozen=True)
class LayerBytes:
    """One compressed layer: its stored matrices (W, or A and B) and the totals."""

    name: str
    shape: tuple[int, int]  # (out, in)
    rank: int | None
    parts: tuple[TensorBytes, ...]
    sharing: int = 1  # the layers of its group that share one basis (engine.methods.shared): 1 for none

    @property
    def original_bytes(self) -> int:
        return 2 * self.shape[0] * self.shape[1]

    @property
    def compressed_bytes(self) -> int:
        return sum(p.total for p in self.parts)

    @property
    def format(self) -> str:
        fmt = "+".join(sorted({p.format for p in self.parts}))
        return f"low-rank({fmt})" if self.rank is not None else fmt

    @property
    def factors_exceed_dense(self) -> bool:
        """True when the factors hold more values than W: r (m + n) > m n (for a group of N layers
        sharing one basis, when the group's do: r (n + N m) > N m n)."""
        out, inp, n = *self.shape, self.sharing
        return self.rank is not None and self.rank * (inp + n * out) > n * out * inp


def kept_count(rows: int, cols: int, sparsity: float, nm: tuple[int, int] | None) -> int:
    """The values a (rows, cols) matrix keeps after pruning, as the masks keep them: exactly
    round(sparsity x n) pruned (magnitude and Wanda alike), or with N:M, N of every M
    consecutive input values and min(N, length) of a shorter last group.

    >>> kept_count(2, 10, 0.0, (2, 4))  # groups of 4, 4 and 2: 2 + 2 + 2 per row
    12
    """
    if nm is not None:
        n, m = nm
        return rows * (n * (cols // m) + min(n, cols % m))
    return rows * cols - round(sparsity * (rows * cols))
