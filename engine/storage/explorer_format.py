"""The explorer's own export format: the compressed model as it would really be stored, in a
folder, and read back.

An export is a folder: `model.safetensors` (every stored tensor of every compressed layer,
as engine.storage.codec writes it, under '<layer>/<W|A|B>.<part>', the fp16 weight of every
layer left alone under '<layer>/weight', and every other parameter at fp16 under
'param/<name>'), `recipe.json`, `config.json`, and `manifest.json` (the model source, library
versions, each layer's recipe, format and byte counts, and each file's size and SHA-256).
The tensor bytes written equal the predicted `compressed_bytes` exactly; the safetensors
header is reported apart. With entropy coding (`write(..., entropy=True)`), a matrix's b-bit
codes may be Huffman-coded where that takes fewer bytes; the manifest then says so per part.
Writing goes to a hidden folder beside the target, renamed into place when complete, so an
interrupted export never leaves a folder that loads.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from engine.errors import UserError
from engine.methods.shared import Share
from engine.storage.codec import decode_layer, encode_layer
from engine.structure.removal import Structure

FORMAT = "compression-explorer export"
VERSION = 1
TENSORS = "model.safetensors"


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

    check_download(work, limit)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write(work, Path(tmp) / name, entropy)
        return zip_folder(Path(tmp) / name), manifest


def check_download(work, limit: int = 512 * 2**20) -> None:
    """Refuse, in one line, to build in memory a download of more than `limit` bytes of tensors."""
    if work.applied.memory.compressed_bytes > limit:
        raise UserError(f"export: {work.applied.memory.compressed_bytes / 2**20:,.0f} MiB is too large to download "
                        f"from the app (limit {limit / 2**20:,.0f} MiB): use python -m engine export")


def zip_folder(folder: str | os.PathLike, files: list[str] | None = None) -> bytes:
    """A folder's files (default: those an export's manifest lists, and the manifest) in a zip
    held in memory, under the folder's name; stored, not deflated: the files are the bytes counted."""
    import zipfile

    folder = Path(folder)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for f in files if files is not None else [*read_manifest(folder)["files"], "manifest.json"]:
            z.write(folder / f, f"{folder.name}/{f}")
    return buf.getvalue()


def write(work, out: str | os.PathLike, entropy: bool = False) -> dict:
    """Write the workspace's applied recipe as an export folder at `out` (atomically); returns
    the manifest. An existing export at `out` is replaced only once the new one is complete;
    any other existing, non-empty folder is refused. With `entropy`, each matrix's b-bit
    codes are Huffman-coded where that is smaller (its part's `coding` says which, and
    `values_written` its bytes); `tensor_bytes` is then what was written, beside the
    fixed-width `predicted_bytes`."""
    import safetensors
    import transformers
    from safetensors.torch import save_file

    out = Path(out)
    applied = work.applied
    if applied is None:
        raise ValueError("export: apply a recipe first")
    if out.exists() and not (out.is_dir() and (is_export(out) or not any(out.iterdir()))):
        raise UserError(f"--out: {str(out)!r} exists and is not an export; not overwritten")
    if not out.parent.is_dir():
        raise UserError(f"--out: folder {str(out.parent)!r} does not exist")
    ex = work.explorer
    tensors, layers = {}, []
    for report in applied.memory.layers:
        info = report.info
        if info.tied_to is not None:
            continue
        if not report.compressed:  # left alone: fp16
            tensors[f"{info.name}/weight"] = work.holders[info.name].matrix().detach().cpu().half().contiguous()
            continue
        stored = work.stored[info.name]
        enc, parts = encode_layer(stored, entropy)  # on the layer's device
        tensors.update({f"{info.name}/{key}": t.cpu() for key, t in enc.items()})
        layers.append({"name": info.name, "shape": list(info.shape), "rank": stored.rank,
                       "recipe": stored.recipe.to_dict(), "parts": parts})
        if stored.share is not None:  # one basis for its group, written with the group's first layer
            layers[-1]["share"] = {"group": list(stored.share.group), "rank": stored.share.rank}
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
            "structure": ex.structure and ex.structure.to_dict(),  # a smaller model's (engine.structure)
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
    recipe: every layer and parameter takes the values decoded from the files, each layer's
    on the device of its weight in the model. Returns the workspace's new Applied, whose
    memory report is the manifest's byte counts."""
    from engine.recipe.recipe import Recipe

    t0 = time.perf_counter()
    manifest, tensors = read(folder)
    work.use(manifest.get("structure") and Structure.from_dict(manifest["structure"]))
    ex = work.explorer
    layers = {layer["name"]: layer for layer in manifest["layers"]}
    known = {i.name for i in ex.layers}
    params = {n: tensors.get(f"param/{n}") for n, _ in work.model.named_parameters()}
    if set(layers) - known or any(t is None for t in params.values()):
        raise UserError(f"export {str(folder)!r}: its layers do not match model {ex.loaded.ref!r}")
    recipe = Recipe.from_dict(manifest["recipe"])
    stored, alone = {}, {}
    for info in ex.layers:
        if info.tied_to is not None:
            continue
        layer = layers.get(info.name)
        device = ex.weight(info.name).device
        if layer is None:
            alone[info.name] = tensors[f"{info.name}/weight"].to(device, torch.float32)
            continue
        prefix = f"{info.name}/"
        share = Share(tuple(layer["share"]["group"]), layer["share"]["rank"]) if "share" in layer else None
        stored[info.name] = decode_layer(
            info.name, info.shape, Recipe.from_dict(layer["recipe"]), layer["rank"], layer["parts"],
            {k[len(prefix):]: v.to(device) for k, v in tensors.items() if k.startswith(prefix)}, share, stored)
    return work.hold(recipe, stored, alone, params, time.perf_counter() - t0, export=str(folder))
