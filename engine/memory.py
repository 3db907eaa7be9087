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
- weight sharing (k-means) stores b-bit indices in place of the codes and one codebook of
  2^b fp16 values per matrix in place of the scales; a pruned entry has no code, so a pruned
  k-means matrix is never stored dense;
- a low-rank layer stores its factors A (out, r) and B (r, in), each counted by these rules;
- everything not compressed (embeddings, norms, biases) takes 2 bytes per parameter.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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
) -> TensorBytes:
    """Bytes of a (rows, cols) matrix with `kept` non-pruned values (`codebook`: k-means
    weight sharing, indices into 2^bits fp16 values, instead of scaled integer codes).

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


@dataclass(frozen=True)
class LayerBytes:
    """One compressed layer: its stored matrices (W, or A and B) and the totals."""

    name: str
    shape: tuple[int, int]  # (out, in)
    rank: int | None
    parts: tuple[TensorBytes, ...]

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
        """True when the factors hold more values than W: r (m + n) > m n."""
        out, inp = self.shape
        return self.rank is not None and self.rank * (out + inp) > out * inp
