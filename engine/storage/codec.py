"""One stored matrix <-> the tensors that hold it, byte for byte as engine.formats.bytes counts them.

Per stored matrix (W, or the factors A and B) of a compressed layer, with n values of which
`kept` survive pruning, in the format the memory count chose:

    dense     values: n codes                       (zeros are coded too)
    bitmask   values: kept codes, mask: n bits       (1 = kept, row-major)
    csr       values: kept codes, col: int32 column per kept value, rowptr: int32 row pointers
    N:M       values: kept codes, nm_index: ceil(log2 M) bits per kept value (its place in its M)
    q4_0 ...  blocks: llama.cpp's blocks of that GGML type, as GGUF stores them (engine.formats.ggml)
    nf4 ...   the float format's own tensors (engine.formats.floats): codes, absmax or scales, ...
    f16       values: n fp16 values (a llama.cpp format whose blocks do not divide the rows)

Codes: round(w / scale) + offset as b-bit unsigned integers (transforms.quantize: offset
2^(b-1) when symmetric, the group's zero-point when not; `scales` fp16, `zeros` b-bit packed;
AWQ: the codes of w x s, with `channel` the fp16 scale s of each input column),
or the index into the codebook (k-means; `codebook`: 2^b fp16 values), or fp16 values
(16 bits). With entropy coding, the b-bit codes may be stored instead as `huffman`,
`code_lengths` and `runs` (engine.storage.huffman) where those take fewer bytes.

Both ways stay on the device of what they are given: a layer on the GPU is encoded there
(the writer moves the tensors to the CPU for the file), and a file's tensors moved to the
GPU decode there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.errors import UserError
from engine.formats import floats, ggml
from engine.formats.bytes import TensorBytes
from engine.formats.grid import Grid, code_offset, codebook_index, dequantize, per_entry, quantize
from engine.methods.shared import SHARED, Share
from engine.pipeline.compress import StoredLayer, StoredMatrix
from engine.storage import huffman, pack


@dataclass(frozen=True)
class Encoded:
    tensors: dict[str, torch.Tensor]
    coding: str  # 'fixed' | 'huffman'
    values_written: int  # bytes of the codes as written


def _kmeans(recipe) -> bool:
    return recipe.quant_method == "kmeans" and recipe.bits < 16


def encode_matrix(v: torch.Tensor, keep: torch.Tensor | None, grid, recipe, fmt: str,
                  entropy: bool = False) -> Encoded:
    """The tensors that store the (rows, cols) matrix `v` (values as compressed, on `grid`).
    With `entropy`, b-bit codes are Huffman-coded (`_coded`) where that is smaller."""
    rows, cols = v.shape
    v = v.detach().float()
    sel = None if fmt == "dense" or keep is None else keep.flatten()
    flat = v.flatten() if sel is None else v.flatten()[sel]
    out = {}
    bits = recipe.bits
    if grid.ggml is not None:
        out["blocks"] = grid.raw
    elif grid.floats is not None:
        out.update(grid.parts)
    elif bits >= 16 or fmt == "f16":
        out["values"] = flat.half()
    elif _kmeans(recipe):
        book = grid.codebook.float()
        out.update(_coded(codes(v, keep if sel is not None else None, grid, recipe), bits, entropy))
        out["codebook"] = torch.cat([book, book[-1:].expand(2**bits - book.numel())]).half()
    else:
        out.update(_coded(codes(v, keep if sel is not None else None, grid, recipe), bits, entropy))
        out["scales"] = grid.scale.half()
        if not recipe.symmetric:
            out["zeros"] = pack.pack_bits(grid.zero, bits)
        if grid.channel is not None:
            out["channel"] = grid.channel.half()
    if sel is not None:
        if fmt == "bitmask":
            out["mask"] = pack.pack_bits(keep.flatten(), 1)
        elif fmt == "csr":
            out["col"] = keep.nonzero(as_tuple=True)[1].int()
            out["rowptr"] = torch.cat([keep.new_zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)]).int()
        else:  # N:M: each kept value's place within its group of M
            m = int(fmt.split(":")[1])
            out["nm_index"] = pack.pack_bits(keep.nonzero(as_tuple=True)[1] % m, math.ceil(math.log2(m)))
    coded = "huffman" in out
    written = nbytes({k: out[k] for k in ("huffman", "code_lengths", "runs")}) if coded else \
        (nbytes({"values": out["values"]}) if "values" in out else nbytes(out))
    return Encoded({k: t.contiguous() for k, t in out.items()}, "huffman" if coded else "fixed", written)


def codes(v: torch.Tensor, keep: torch.Tensor | None, grid, recipe) -> torch.Tensor:
    """The b-bit codes (int64) of the kept values of `v` (all, with no mask), in row-major
    order: indices into the k-means codebook, or the uniform grid's codes."""
    rows, cols = v.shape
    v = v.detach().float()
    sel = None if keep is None else keep.flatten()
    if grid.channel is not None:  # AWQ: the codes are those of W diag(s)
        v = v * grid.channel.float()
    flat = v.flatten() if sel is None else v.flatten()[sel]
    if _kmeans(recipe):
        return codebook_index(flat, grid.codebook.float())
    scale, offset = (t.flatten() if sel is None else t.flatten()[sel] for t in
                     per_entry((grid.scale.float(), code_offset(grid.zero.float(), recipe.bits, recipe.symmetric)),
                               rows, cols, recipe.granularity, recipe.group_size))
    return quantize(flat, scale, offset, recipe.bits).long()


def _coded(codes: torch.Tensor, bits: int, entropy: bool) -> dict:
    """b-bit codes packed ('values'), or with `entropy` Huffman-coded ('huffman', its
    'code_lengths' and 'runs', see engine.storage.huffman) when those bytes are fewer."""
    packed = {"values": pack.pack_bits(codes, bits)}
    if not entropy or codes.numel() == 0:
        return packed
    codes = codes.to(torch.int64)
    lengths = huffman.code_lengths(torch.bincount(codes, minlength=1 << bits))
    stream, runs = huffman.encode(codes, lengths)
    coded = {"huffman": stream, "code_lengths": lengths, "runs": runs}
    return coded if nbytes(coded) < nbytes(packed) else packed


def nbytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _codes(t: dict, bits: int, count: int) -> torch.Tensor:
    if "huffman" in t:
        return huffman.decode(t["huffman"], t["code_lengths"], t["runs"], count)
    return pack.unpack_bits(t["values"], bits, count)


def _positions(t: dict, rows: int, cols: int, count: int, fmt: str) -> torch.Tensor | None:
    """Where the kept values sit, as flat indices (or a flat bool mask); None when dense."""
    if fmt == "dense" or fmt == "f16" or fmt in ggml.TYPES or floats.parse(fmt):
        return None
    if fmt == "bitmask":
        return pack.unpack_bits(t["mask"], 1, rows * cols).bool()
    if fmt == "csr":
        ptr = t["rowptr"].long()
        row = torch.repeat_interleave(torch.arange(rows, device=ptr.device), ptr[1:] - ptr[:-1])
        return row * cols + t["col"].long()
    n, m = (int(x) for x in fmt.split(":"))
    place = pack.unpack_bits(t["nm_index"], math.ceil(math.log2(m)), count)
    groups = -(-cols // m)
    per_group = torch.full((groups,), n, device=place.device)
    per_group[-1] = min(n, cols - (groups - 1) * m)
    group = torch.repeat_interleave(torch.arange(groups, device=place.device), per_group).repeat(rows)
    row = torch.arange(rows, device=place.device).repeat_interleave(int(per_group.sum()))
    return row * cols + group * m + place


def decode_matrix(t: dict, shape: tuple[int, int], kept: int, recipe, fmt: str):
    """The inverse of encode_matrix: (values (rows, cols) float32, their Grid, the keep-mask or
    None when the format stores none)."""
    rows, cols = shape
    count = rows * cols if fmt in ("dense", "f16") else kept
    bits = recipe.bits
    positions = _positions(t, rows, cols, count, fmt)
    grid = Grid()
    if fmt in ggml.TYPES:
        grid = Grid(ggml=fmt, raw=t["blocks"])
        values = ggml.dequantize(t["blocks"], fmt, cols)
    elif floats.parse(fmt):
        grid = Grid(floats=fmt, parts=t)
        name, double_quant = floats.parse(fmt)
        values = floats.dequantize(t, name, shape, double_quant)
    elif bits >= 16 or fmt == "f16":
        values = t["values"].float()
    elif _kmeans(recipe):
        grid = Grid(codebook=t["codebook"].float())
        values = grid.codebook[_codes(t, bits, count)]
    else:
        scale = t["scales"].float()
        zero = pack.unpack_bits(t["zeros"], bits, scale.numel()).float() if "zeros" in t \
            else torch.zeros_like(scale)
        channel = t["channel"].float() if "channel" in t else None
        grid = Grid(scale, zero, channel=channel)
        s_e, o_e = (x.flatten() for x in per_entry((scale, code_offset(zero, bits, recipe.symmetric)),
                                                   rows, cols, recipe.granularity, recipe.group_size))
        c_e = None if channel is None else channel.expand(rows, cols).flatten()
        if positions is not None:
            idx = positions.nonzero(as_tuple=True)[0] if positions.dtype == torch.bool else positions
            s_e, o_e = s_e[idx], o_e[idx]
            c_e = None if c_e is None else c_e[idx]
        values = dequantize(_codes(t, bits, count).float(), s_e, o_e)
        if c_e is not None:  # AWQ: the grid holds W diag(s)
            values = values / c_e
    if positions is None:
        return values.view(rows, cols), grid, None
    out = values.new_zeros(rows * cols)
    out[positions] = values
    keep = torch.zeros(rows * cols, dtype=torch.bool, device=values.device)
    keep[positions] = True
    return out.view(rows, cols), grid, keep.view(rows, cols)


def encode_layer(stored: StoredLayer, entropy: bool = False) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A compressed layer's tensors as stored, keyed '<W|A|B>.<values|scales|zeros|mask|col|
    rowptr|nm_index|codebook|channel|huffman|code_lengths|runs>', and per matrix its shape, kept count,
    format, bytes by component and coding. A basis shared with another layer (engine.methods.shared)
    is not written again: its part names the layer that stores it (`shared_with`)."""
    tensors, parts = {}, []
    for label, m in zip(stored.labels, stored.matrices):
        if m.bytes.format == SHARED.format:
            parts.append({"matrix": label, "shape": list(m.values.shape), "kept": m.kept, "format": SHARED.format,
                          "values": 0, "scales": 0, "index": 0, "coding": "fixed", "values_written": 0,
                          "shared_with": stored.share.owner})
            continue
        enc = encode_matrix(m.values, m.keep, m.grid, stored.recipe, m.bytes.format, entropy)
        tensors.update({f"{label}.{k}": t for k, t in enc.tensors.items()})
        parts.append({"matrix": label, "shape": list(m.values.shape), "kept": m.kept, "format": m.bytes.format,
                      "values": m.bytes.values, "scales": m.bytes.scales, "index": m.bytes.index,
                      "coding": enc.coding, "values_written": enc.values_written})
    return tensors, parts


def decode_layer(name: str, shape, recipe, rank: int | None, parts: list[dict],
                 tensors: dict[str, torch.Tensor], share: Share | None = None,
                 decoded: dict | None = None) -> StoredLayer:
    """The inverse of `encode_layer`: the layer read back from its tensors and parts; a shared
    basis is taken from the layer that stores it, among `decoded` (name -> StoredLayer)."""
    mats = []
    for p in parts:
        if p["format"] == SHARED.format:
            owner = (decoded or {}).get(p.get("shared_with"))
            if owner is None:
                raise UserError(f"layer {name}: its shared basis is stored with {p.get('shared_with')}, "
                                "which the export does not hold before it")
            m = owner.matrices[1]
            mats.append(StoredMatrix(m.values, m.grid, m.keep, m.kept, SHARED))
            continue
        t = {k[len(p["matrix"]) + 1:]: v for k, v in tensors.items() if k.startswith(p["matrix"] + ".")}
        values, grid, keep = decode_matrix(t, tuple(p["shape"]), p["kept"], recipe, p["format"])
        mats.append(StoredMatrix(values, grid, keep, p["kept"],
                                 TensorBytes(p["values"], p["scales"], p["index"], p["format"])))
    return StoredLayer(name, tuple(shape), recipe, rank, tuple(mats), share)
