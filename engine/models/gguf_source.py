"""Any GGUF file as a source model: dequantized once, by transformers, to a Hugging Face folder.

    file = gguf_in("models/")                    # a .gguf file, or the one a folder holds (else None)
    folder, types = converted(file)              # ~15-30 s for a 135M model the first time; then at once
    weights_note("x.gguf", types)                # what the fp32 baseline is: "dequantized from ... Q4_K (80.0%) ..."

The converted folder lies in the machine's cache (`cache_dir() / "gguf"`), named by the SHA-256 of
the file's bytes (read in 1 MiB chunks, once per version of the file in a process): a copy of the
file at another path finds the same folder, a changed file converts again. It is written to a
temporary folder that is renamed into place, so that a reader never sees half of one.
A file is refused in one line when it is not GGUF, is truncated, holds no tensors, or is of an
architecture transformers cannot load. Telling the explorer's own exports (`explorer.source` in
their metadata) from other files is the storage layer's (engine.storage.detect).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import torch

from engine.errors import UserError, one_line
from engine.formats.ggml import TYPES
from engine.hardware.machine import cache_dir
from engine.models.building import building

log = logging.getLogger(__name__)

MAGIC = b"GGUF"
MARKER = "converted-from.json"  # written last into the temporary folder: a folder with it is whole
# llama.cpp's architecture names that transformers reads under another name (modeling_gguf_pytorch_utils)
_RENAMED = {"qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe", "gpt-oss": "gpt_oss", "minimax-m2": "minimax_m2",
            "t5encoder": "t5"}
_FLOATS = ("F16", "BF16", "F32", "F64")


def _starts_with_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == MAGIC
    except OSError as e:
        raise UserError(f"cannot read {str(path)!r}: {e.strerror or one_line(e)}") from None


def gguf_in(ref: str | os.PathLike) -> Path | None:
    """The GGUF file `ref` names: itself (a file named .gguf, or any file that begins with GGUF's
    magic bytes), or the one .gguf file a folder without config.json holds; None otherwise. A
    folder with several is refused in one line."""
    path = Path(ref)
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" or _starts_with_magic(path) else None
    if not path.is_dir() or (path / "config.json").exists():
        return None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
    if len(files) > 1:
        names = ", ".join(p.name for p in files[:3]) + (", ..." if len(files) > 3 else "")
        raise UserError(f"model folder {str(ref)!r} has no config.json and {len(files)} GGUF files ({names}): "
                        "give one of them")
    return files[0] if files else None


@functools.lru_cache(maxsize=4)
def _parsed(path: str, mtime_ns: int, size: int):
    import gguf

    return gguf.GGUFReader(path)


def reader(path: str | os.PathLike):
    """The file's gguf.GGUFReader, parsed once per version of the file (its metadata is parsed
    field by field in Python: SmolLM2's 49,152 tokens and 48,900 merges take about 2-4 s)."""
    stat = os.stat(path)
    return _parsed(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()  # in chunks: the file is never held whole


def digest(path: str | os.PathLike) -> str:
    """The SHA-256 of the file's bytes, hashed once per version of the file (its size, modification
    time and inode) in a process: the cache key of its converted folder."""
    stat = os.stat(path)
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


def cache_path(path: str | os.PathLike) -> Path:
    """Where the file's converted folder lies (whether or not it is there yet)."""
    return cache_dir() / "gguf" / digest(path)[:32]


def _marker(folder: Path, sha: str) -> dict | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if marker.get("sha256") == sha else None


def cached(path: str | os.PathLike) -> dict | None:
    """The converted folder's record (sha256, bytes, architecture, types) when it is there; else None."""
    return _marker(cache_path(path), digest(path))


def inspect(path: str | os.PathLike) -> dict:
    """What a GGUF file holds, checked before it is converted: its architecture and its weights'
    types {type name: values}. A file that is not GGUF, is truncated, holds no tensors, or is of an
    architecture transformers cannot load is refused in one line."""
    name, size = str(path), os.path.getsize(path)
    if size < 4 or not _starts_with_magic(Path(path)):
        raise UserError(f"{name!r} is not a GGUF file (it does not begin with GGUF's magic bytes {MAGIC.decode()!r})")
    try:
        r = reader(path)
        end = max((t.data_offset + int(t.n_bytes) for t in r.tensors), default=0)
    except (ValueError, IndexError, OSError):  # the gguf package reads past the end of the file
        raise UserError(f"{name!r} is truncated or damaged: its header and tensors do not fit its "
                        f"{size:,} bytes") from None
    if end > size:
        raise UserError(f"{name!r} is truncated: its tensors end at byte {end:,}, the file at {size:,}")
    if not r.tensors:
        raise UserError(f"{name!r} holds no tensors (a GGUF file of metadata only): no weights to load")
    field = r.fields.get("general.architecture")
    arch = field.contents() if field is not None else None
    if not isinstance(arch, str):
        raise UserError(f"{name!r} names no architecture (no general.architecture in its metadata)")
    _check_architecture(arch)
    types: dict[str, int] = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + int(t.n_elements)
    return {"architecture": arch, "types": dict(sorted(types.items(), key=lambda kv: -kv[1]))}


def _check_architecture(arch: str) -> None:
    import transformers
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    supported = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"}  # the table's other sections
    if arch not in supported and _RENAMED.get(arch) not in supported:
        raise UserError(f"cannot load GGUF architecture {arch!r}: transformers {transformers.__version__} does not "
                        f"support it (it reads {', '.join(sorted(supported))})")


def bits_per_weight(kind: str) -> float:
    """A GGUF type's bits per weight, its scales included (gguf.GGML_QUANT_SIZES).

    >>> bits_per_weight("Q4_K"), bits_per_weight("Q4_1"), bits_per_weight("F16")
    (4.5, 5.0, 16.0)
    """
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
    return 8 * size / block


def _code_bits(kind: str) -> int | None:
    """The width of a quantized type's codes: engine.formats.ggml's table, else the name's number."""
    if kind.lower() in TYPES:
        return TYPES[kind.lower()].bits
    digits = re.search(r"\d+", kind)
    return int(digits.group()) if digits else None


def weights_note(name: str, types: dict[str, int]) -> str:
    """What a model dequantized from a GGUF file is, for the note every report carries: the
    file's types with their share of the values, largest first, and what the largest holds.

    >>> weights_note("m.gguf", {"Q4_K": 800, "Q6_K": 195, "F32": 5})
    'baseline is m.gguf dequantized to fp32 from a GGUF file of types Q4_K (80.0%), Q6_K (19.5%), F32 (0.5%): \
mostly Q4_K, 4-bit codes at 4.5 bits per weight with their scales; an already quantized model, not the original weights'
    """
    total = sum(types.values())
    shares = ", ".join(f"{k} ({v / total:.1%})" if v / total >= 0.001 else f"{k} (<0.1%)" for k, v in types.items())
    top = max(types, key=types.get)
    bpw = f"{bits_per_weight(top):g} bits per weight"
    text = f"baseline is {name} dequantized to fp32 from a GGUF file of types {shares}: mostly {top}"
    if top in _FLOATS:
        return f"{text}, {bpw}"
    code = _code_bits(top)
    return (f"{text}, {f'{code}-bit codes at ' if code else ''}{bpw} with their scales; "
            "an already quantized model, not the original weights")


def converted(path: str | os.PathLike) -> tuple[Path, dict]:
    """The file's dequantized Hugging Face folder (fp32 weights, config and tokenizer), converted
    on first use, and its record (sha256, bytes, architecture, types); refused in one line when
    the file cannot be loaded (`inspect`)."""
    path = Path(path)
    sha, target = digest(path), cache_path(path)
    marker = _marker(target, sha)
    if marker is not None:
        return target, marker
    with building():  # one thread converts; another waits for it, then finds the folder converted
        marker = _marker(target, sha)
        if marker is None:
            marker = {"sha256": sha, "bytes": path.stat().st_size, **inspect(path)}
            _convert(path, target, marker)
    return target, marker


def _convert(path: Path, target: Path, marker: dict) -> None:
    """Dequantize `path` with transformers into a temporary folder beside `target`, then rename it."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", path, target)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    bar = tqdm(total=4, desc=f"dequantizing {path.name} (once)", unit="step", file=sys.stderr)
    try:
        bar.set_postfix_str("the weights")
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        bar.update()
        bar.set_postfix_str("the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        bar.update()
        bar.set_postfix_str("writing")
        model.hf_quantizer = None
        model.config.quantization_config = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        bar.update()
        _move(tmp, target, marker["sha256"])
        bar.update()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 -- transformers' reading of the user's file, in one line
        raise UserError(f"cannot load {str(path)!r}: {one_line(e)}") from None
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _move(tmp: Path, target: Path, sha: str) -> None:
    """Rename the converted folder into place; another process that got there first wins."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if _marker(target, sha) is not None:
        return
    shutil.rmtree(target, ignore_errors=True)  # a folder left half-written by a process that died
    try:
        os.replace(tmp, target)
    except OSError:
        if _marker(target, sha) is None:
            raise
