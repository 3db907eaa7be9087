"""The compressed model as it would really be stored, written to disk and read back.

An export is a folder: `model.safetensors` (every tensor as bytes: b-bit codes packed, fp16
scales, packed zero-points, masks / CSR indices / N:M positions, k-means codebooks and
indices, fp16 for everything left at 16 bits), `recipe.json`, and `manifest.json` (the model
source, library versions, each layer's format and byte counts, and each file's size and
SHA-256). Per stored matrix (W, or the factors A and B) of a compressed layer, with n values
of which `kept` survive pruning, in the format the memory count chose:

    dense     values: n codes                       (zeros are coded too)
    bitmask   values: kept codes, index: n bits      (1 = kept, row-major)
    csr       values: kept codes, index: int32 column per kept value, int32 row pointers
    N:M       values: kept codes, index: ceil(log2 M) bits per kept value (its place in its M)

Codes: round(w / scale) + offset as b-bit unsigned integers (offset 2^(b-1) when symmetric,
the group's zero-point when not), or the index into the codebook (k-means), or fp16 values
(16 bits). The tensor bytes written equal the predicted `compressed_bytes` exactly; the
safetensors header is reported apart. With entropy coding (`write(..., entropy=True)`), a
matrix's b-bit codes may be stored instead as `huffman`, `code_lengths` and `runs`
(engine.huffman) where those take fewer bytes; the manifest then says so per part. Writing goes to a hidden folder beside the target,
renamed into place when complete, so an interrupted export never leaves a folder that loads.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from . import huffman, pack
from .methods import codebook_index
from .errors import UserError
from .transforms import per_entry

FORMAT = "compression-explorer export"
VERSION = 1
TENSORS = "model.safetensors"


# ---------------------------------------------------------------------------------------
# One stored matrix <-> its tensors
# ---------------------------------------------------------------------------------------


def encode_matrix(v: torch.Tensor, keep: torch.Tensor | None, grid, recipe, fmt: str, kmeans: bool,
                  entropy: bool = False) -> dict:
    """The tensors that store the (rows, cols) matrix `v` (values as compressed, on `grid`).
    With `entropy`, b-bit codes are Huffman-coded (`_coded`) where that is smaller."""
    rows, cols = v.shape
    v = v.detach().float().cpu()
    sel = None if fmt == "dense" or keep is None else keep.cpu().flatten()
    flat = v.flatten() if sel is None else v.flatten()[sel]
    out = {}
    bits = recipe.bits
    if bits >= 16:
        out["values"] = flat.half()
    elif kmeans:
        book = grid.codebook.float().cpu()
        idx = codebook_index(flat, book)
        out.update(_coded(idx, bits, entropy))
        out["codebook"] = torch.cat([book, book[-1:].expand(2**bits - book.numel())]).half()
    else:
        scale, zero = (t.flatten() if sel is None else t.flatten()[sel] for t in
                       per_entry((grid.scale.float().cpu(), grid.zero.float().cpu()), rows, cols,
                                 recipe.granularity, recipe.group_size))
        offset = 2 ** (bits - 1) if recipe.symmetric else zero
        out.update(_coded((flat / scale).round() + offset, bits, entropy))
        out["scales"] = grid.scale.cpu().half()
        if not recipe.symmetric:
            out["zeros"] = pack.pack_bits(grid.zero.cpu(), bits)
    if sel is not None:
        keep = keep.cpu()
        if fmt == "bitmask":
            out["mask"] = pack.pack_bits(keep.flatten(), 1)
        elif fmt == "csr":
            r, c = keep.nonzero(as_tuple=True)
            out["col"] = c.int()
            out["rowptr"] = torch.cat([torch.zeros(1, dtype=torch.int64), keep.sum(1).cumsum(0)]).int()
        else:  # N:M: each kept value's place within its group of M
            m = int(fmt.split(":")[1])
            out["nm_index"] = pack.pack_bits(keep.nonzero(as_tuple=True)[1] % m, math.ceil(math.log2(m)))
    return out


def _coded(codes: torch.Tensor, bits: int, entropy: bool) -> dict:
    """b-bit codes packed ('values'), or with `entropy` Huffman-coded ('huffman', its
    'code_lengths' and 'runs', see engine.huffman) when those bytes are fewer."""
    packed = {"values": pack.pack_bits(codes, bits)}
    if not entropy or codes.numel() == 0:
        return packed
    codes = codes.to(torch.int64)
    lengths = huffman.code_lengths(torch.bincount(codes, minlength=1 << bits))
    stream, runs = huffman.encode(codes, lengths)
    coded = {"huffman": stream, "code_lengths": lengths, "runs": runs}
    return coded if _nbytes(coded) < _nbytes(packed) else packed


def _nbytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _codes(t: dict, bits: int, count: int) -> torch.Tensor:
    if "huffman" in t:
        return huffman.decode(t["huffman"], t["code_lengths"], t["runs"], count)
    return pack.unpack_bits(t["values"], bits, count)


def decode_matrix(t: dict, shape: tuple[int, int], kept: int, recipe, fmt: str, kmeans: bool) -> torch.Tensor:
    """The inverse of encode_matrix: the (rows, cols) matrix of dequantized values (float32)."""
    rows, cols = shape
    n = rows * cols
    count = n if fmt == "dense" else kept
    bits = recipe.bits
    if fmt == "dense":
        positions = None
    elif fmt == "bitmask":
        positions = pack.unpack_bits(t["mask"], 1, n).bool()
    elif fmt == "csr":
        ptr = t["rowptr"].long()
        row = torch.repeat_interleave(torch.arange(rows), ptr[1:] - ptr[:-1])
        positions = row * cols + t["col"].long()
    else:
        nn_, m = (int(x) for x in fmt.split(":"))
        place = pack.unpack_bits(t["nm_index"], math.ceil(math.log2(m)), count)
        groups = -(-cols // m)
        per_group = torch.full((groups,), nn_)
        per_group[-1] = min(nn_, cols - (groups - 1) * m)
        group = torch.repeat_interleave(torch.arange(groups), per_group).repeat(rows)
        row = torch.arange(rows).repeat_interleave(int(per_group.sum()))
        positions = row * cols + group * m + place
    if bits >= 16:
        values = t["values"].float()
    elif kmeans:
        values = t["codebook"].float()[_codes(t, bits, count)]
    else:
        scale = t["scales"].float()
        zero = pack.unpack_bits(t["zeros"], bits, scale.numel()).float() if "zeros" in t \
            else torch.full_like(scale, 2 ** (bits - 1))
        s_e, z_e = (x.flatten() for x in per_entry((scale, zero), rows, cols, recipe.granularity, recipe.group_size))
        if positions is not None:
            idx = positions.nonzero(as_tuple=True)[0] if positions.dtype == torch.bool else positions
            s_e, z_e = s_e[idx], z_e[idx]
        values = (_codes(t, bits, count).float() - z_e) * s_e
    if positions is None:
        return values.view(rows, cols)
    out = torch.zeros(n)
    out[positions] = values
    return out.view(rows, cols)


# ---------------------------------------------------------------------------------------
# A workspace's model -> folder, and back
# ---------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_export(path: str | os.PathLike) -> bool:
    return (Path(path) / "manifest.json").is_file()


def zipped(work, name: str, limit: int = 512 * 2**20, entropy: bool = False) -> tuple[bytes, dict]:
    """The workspace's applied recipe as an export folder `name` (write), in a zip (zip_folder),
    and its manifest. Refused above `limit` bytes of tensors."""
    import tempfile

    if work.applied.memory.compressed_bytes > limit:
        raise UserError(f"export: {work.applied.memory.compressed_bytes / 2**20:,.0f} MiB is too large to download "
                        f"from the app (limit {limit / 2**20:,.0f} MiB): use python -m engine export")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write(work, Path(tmp) / name, entropy)
        return zip_folder(Path(tmp) / name), manifest


def zip_folder(folder: str | os.PathLike) -> bytes:
    """An export folder's files (those its manifest lists, and the manifest) in a zip held in
    memory, under the folder's name; stored, not deflated: the files are the bytes counted."""
    import zipfile

    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in [*read_manifest(folder)["files"], "manifest.json"]:
            z.write(folder / f, f"{folder.name}/{f}")
    return buf.getvalue()


def write(work, out: str | os.PathLike, entropy: bool = False) -> dict:
    """Write the workspace's applied recipe as an export folder at `out` (atomically); returns
    the manifest. An existing export at `out` is replaced only once the new one is complete;
    any other existing, non-empty folder is refused. With `entropy`, each matrix's b-bit
    codes are Huffman-coded where that is smaller (its part's `coding` says which, and
    `values_written` its bytes); `tensor_bytes` is then what was written, beside the
    fixed-width `predicted_bytes`."""
    from safetensors.torch import save_file
    import safetensors
    import transformers

    out = Path(out)
    applied = work.applied
    if applied is None:
        raise ValueError("export: apply a recipe first")
    if out.exists() and not (out.is_dir() and (is_export(out) or not any(out.iterdir()))):
        raise UserError(f"--out: {str(out)!r} exists and is not an export; not overwritten")
    if not out.parent.is_dir():
        raise UserError(f"--out: folder {str(out.parent)!r} does not exist")
    ex = work.explorer
    per_layer = applied.per_layer or {}
    tensors, layers = {}, []
    for report in applied.memory.layers:
        info = report.info
        if info.tied_to is not None:
            continue
        holder = work.holders[info.name]
        if not report.compressed:  # left alone: fp16
            tensors[f"{info.name}/weight"] = holder.matrix().detach().cpu().half().contiguous()
            continue
        recipe = per_layer.get(info.name, applied.recipe)
        kmeans = recipe.quant_method == "kmeans" and recipe.bits < 16
        mats = holder.tensors()
        shaped = work._shaped[info.name]
        parts = []
        for k, (m, part) in enumerate(zip(mats, report.bytes.parts)):
            label = "W" if len(mats) == 1 else "AB"[k]
            enc = encode_matrix(m, shaped.keeps[k], work._grids[info.name][k], recipe, part.format, kmeans, entropy)
            for key, t in enc.items():
                tensors[f"{info.name}/{label}.{key}"] = t.contiguous()
            huff = "huffman" in enc
            parts.append({"matrix": label, "shape": list(m.shape), "kept": shaped.kept[k], "format": part.format,
                          "values": part.values, "scales": part.scales, "index": part.index,
                          "coding": "huffman" if huff else "fixed",
                          "values_written": _nbytes({key: enc[key] for key in ("huffman", "code_lengths", "runs")})
                          if huff else part.values})
        layers.append({"name": info.name, "shape": list(info.shape), "rank": report.bytes.rank,
                       "recipe": recipe.to_dict(), "parts": parts})
    for name, p in work.model.named_parameters():
        tensors[f"param/{name}"] = p.detach().cpu().half().contiguous()
    data_bytes = sum(t.numel() * t.element_size() for t in tensors.values())

    _clean_stale(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(tensors, str(tmp / TENSORS))
        (tmp / "recipe.json").write_text(applied.recipe.to_json(), encoding="utf-8")
        ex.loaded.model.config.save_pretrained(tmp)
        files = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        manifest = {
            "format": FORMAT, "version": VERSION,
            "model": {"ref": ex.loaded.ref, "source": str(ex.loaded.source), "kind": ex.kind, "note": ex.loaded.note},
            "libraries": {"python": platform.python_version(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "safetensors": safetensors.__version__},
            "recipe": applied.recipe.to_dict(),
            "entropy": entropy,
            "predicted_bytes": applied.memory.compressed_bytes,
            "tensor_bytes": data_bytes,
            "header_bytes": files[TENSORS]["bytes"] - data_bytes,
            "layers": layers,
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _swap(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _clean_stale(out: Path) -> None:
    """Remove what a killed export of `out` left beside it: its hidden partial folder, or the
    earlier export it had moved aside, which goes back in place when `out` is missing (the
    writer died between the two renames of `_swap`)."""
    for p in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 2:].rpartition("-")
        if kind not in ("partial", "old") or not pid.isdigit() or _alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.replace(p, out)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _swap(tmp: Path, out: Path) -> None:
    """Put the complete folder `tmp` at `out`; an earlier folder there is moved aside first
    and deleted only after the new one is in place."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(folder: str | os.PathLike) -> dict:
    """An export's manifest, read and its format checked (its files are not: see `read`)."""
    mpath = Path(folder) / "manifest.json"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        assert isinstance(manifest["files"], dict) and manifest["format"] == FORMAT
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise UserError(f"export {str(folder)!r}: {mpath.name} is missing or not an export manifest") from None
    if manifest.get("version") != VERSION:
        raise UserError(f"export {str(folder)!r}: format version {manifest.get('version')}, this engine reads {VERSION}")
    return manifest


def read(folder: str | os.PathLike) -> tuple[dict, dict]:
    """(manifest, tensors) of an export, every file checked against the manifest first; a
    missing, truncated or altered file is refused with a message that names it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, want in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise UserError(f"export {str(folder)!r}: file {name} is missing")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise UserError(f"export {str(folder)!r}: file {name} has {size:,} bytes, the manifest says "
                            f"{want['bytes']:,} (truncated or replaced)")
        if _sha256(path) != want["sha256"]:
            raise UserError(f"export {str(folder)!r}: file {name} is corrupt (its SHA-256 differs from the manifest)")
    try:
        tensors = load_file(str(folder / TENSORS))
    except Exception as e:  # noqa: BLE001 -- any parse failure is a bad file
        raise UserError(f"export {str(folder)!r}: file {TENSORS} cannot be read ({e})") from None
    return manifest, tensors


def load_into(work, folder: str | os.PathLike):
    """Fill a workspace (of the export's source model) from an export instead of applying a
    recipe: every layer and parameter takes the values decoded from the files. Returns the
    workspace's new Applied, whose memory report is the manifest's byte counts."""
    from .memory import LayerBytes, LayerReport, TensorBytes, memory_report
    from .recipe import Recipe
    from .session import Applied

    t0 = time.perf_counter()
    manifest, tensors = read(folder)
    ex = work.explorer
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    known = {i.name for i in ex.layers}
    if set(layers) - known or any(f"param/{n}" not in tensors for n, _ in work.model.named_parameters()):
        raise UserError(f"export {str(folder)!r}: its layers do not match model {ex.loaded.ref!r}")
    top = Recipe.from_dict(manifest["recipe"])
    reports, per_layer = [], {}
    with torch.no_grad():
        for info in ex.layers:
            if info.tied_to is not None:
                continue
            holder = work.holders[info.name]
            layer = layers.get(info.name)
            if layer is None:
                holder.set(w=tensors[f"{info.name}/weight"].float())
                reports.append(LayerReport.left_alone(info))
                continue
            recipe = Recipe.from_dict(layer["recipe"])
            if recipe != top:
                per_layer[info.name] = recipe
            kmeans = recipe.quant_method == "kmeans" and recipe.bits < 16
            mats = []
            for p in layer["parts"]:
                prefix = f"{info.name}/{p['matrix']}."
                t = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                mats.append(decode_matrix(t, tuple(p["shape"]), p["kept"], recipe, p["format"], kmeans))
            holder.fill(mats)
            parts = tuple(TensorBytes(p["values"], p["scales"], p["index"], p["format"]) for p in layer["parts"])
            stored = sum(math.prod(p["shape"]) for p in layer["parts"])
            zeros = stored - sum(p["kept"] for p in layer["parts"])
            reports.append(LayerReport(info, True, LayerBytes(info.name, info.shape, layer["rank"], parts),
                                       zeros / stored, recipe.bits, None))
        for name, p in work.model.named_parameters():
            p.copy_(tensors[f"param/{name}"].to(p.dtype))
    work.forget_shapes()
    work.applied = Applied(top, memory_report(ex.layers, ex.total_params, reports), time.perf_counter() - t0,
                           per_layer, export=str(folder))
    return work.applied
