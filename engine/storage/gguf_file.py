"""A workspace's compressed model as a GGUF file, the format llama.cpp (and transformers) load.

Every compressed matrix goes in as it is stored: a layer in one of llama.cpp's types
(engine.formats.ggml) writes its blocks byte for byte; the explorer's own symmetric grid in groups of
32 writes as the llama.cpp type with the same blocks (4 bits as q4_0, 5 as q5_0, 8 as q8_0).
What GGUF cannot hold (low-rank factors, pruning masks, k-means codebooks, the explorer's 2, 3,
6 and 7-bit grids, other grids) is refused in one line naming the layer, or with
`dense_fallback` written in the smallest type that holds its values exactly (a 2- or 3-bit grid
in groups of 32 as q4_0, 6 or 7 bits as q8_0; anything else f16, else f32), the bytes that adds
reported. Norms are
f32, other parameters f16. The Llama family only (Llama, Mistral, SmolLM: llama.cpp's `llama`
architecture), whose q and k projections GGUF stores with their rows permuted for llama.cpp's
rotary layout; the tokenizer is copied from the GGUF file the model came from, or written from
a Hugging Face byte-level BPE tokenizer (gguf_vocab: GPT-2, Llama 3, Qwen2 and SmolLM's).

    report = write(work, "out/", dense_fallback=False)   # out/<model>.gguf
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.errors import UserError
from engine.formats import ggml
from engine.formats.bytes import TensorBytes, ggml_bytes
from engine.formats.ggml import legacy
from engine.formats.grid import Grid
from engine.models import gguf_source
from engine.models.loading import gguf_file
from engine.pipeline.compress import StoredLayer, StoredMatrix
from engine.recipe.presets import gguf_names
from engine.recipe.recipe import Recipe
from engine.storage import gguf_vocab
from engine.structure import blocks, removal

ARCHES = {"llama": "llama", "mistral": "llama"}
SOURCE_KEY, RECIPE_KEY = "explorer.source", "explorer.recipe"
STRUCTURE_KEY = "explorer.structure"  # a smaller model's Structure (engine.structure.removal), as JSON
_EXACT = {2: "q4_0", 3: "q4_0", 4: "q4_0", 5: "q5_0", 6: "q8_0", 7: "q8_0", 8: "q8_0"}


def _rope_permutation(rows: int, heads: int) -> torch.Tensor:
    """The row order llama.cpp's converter gives a q or k projection: within each head, the
    rotary pairs (i, i + d/2) of Hugging Face's layout become neighbours (2i, 2i + 1)."""
    return torch.arange(rows).reshape(heads, 2, rows // heads // 2).transpose(1, 2).reshape(-1)


def _int_blocks(stored, fmt: str) -> torch.Tensor:
    """The explorer's symmetric grid in groups of 32 (codes c in [-2^(b-1), 2^(b-1) - 1], fp16
    scale s, value c s) as llama.cpp blocks of `fmt` whose values are exactly the same."""
    (m,) = stored.matrices
    rows, cols = m.values.shape
    d = m.grid.scale.reshape(-1).float()  # one per block of 32, row-major
    q = (m.values.reshape(-1, 32).float() / d[:, None]).round().nan_to_num(0)
    if fmt != "q8_0":
        q = q + (8 if fmt == "q4_0" else 16)
    return legacy.pack(fmt, q, d, None).reshape(rows, -1)


def tensor_type(stored) -> tuple[str | None, str]:
    """How a compressed layer goes into GGUF: (llama.cpp type or None, why not / how)."""
    r = stored.recipe
    (m, *more) = stored.matrices
    if more:
        return None, f"low rank {stored.rank} (GGUF stores full matrices)"
    if m.keep is not None:
        return None, "pruned (GGUF has no sparse tensors)"
    if m.grid.ggml is not None:
        return m.grid.ggml, "its llama.cpp blocks, as stored"
    if m.grid.floats is not None:
        return None, f"{m.grid.floats} (no GGUF type holds it)"
    if m.grid.codebook is not None:
        return None, "a k-means codebook (no GGUF type)"
    if m.grid.scale is None:
        return None, "fp16"
    if m.grid.channel is not None:
        return None, "AWQ's channel scales (no GGUF type holds them)"
    if r.symmetric and r.granularity == "group" and r.group_size == 32 and m.values.shape[1] % 32 == 0:
        fmt = _EXACT[r.bits]
        same = ggml.TYPES[fmt].bits == r.bits
        return fmt, f"int{r.bits} g32 symmetric as {fmt}" + ("" if same else f" (no {r.bits}-bit GGUF type: "
                                                              f"{fmt} holds it exactly, with more bytes)")
    return None, f"int{r.bits} {r.granularity}{'' if r.granularity != 'group' else r.group_size}" \
                 f"{'' if r.symmetric else ' asymmetric'} (no GGUF type holds this grid)"


def check(work, dense_fallback: bool = False) -> list[str]:
    """The layers GGUF cannot hold, one line each (empty: it can hold them all)."""
    model_type = getattr(work.model.config, "model_type", "")
    if model_type not in ARCHES:
        raise UserError(f"--format gguf: the Llama family only (Llama, Mistral, SmolLM); this model is {model_type!r}")
    if gguf_file(work.explorer.loaded.ref) is None:
        gguf_vocab.pre_name(gguf_vocab.spec_of(work.explorer.loaded.tokenizer))  # refused here, before any work
    if dense_fallback:
        return []
    out = []
    for name, stored in work.stored.items():
        fmt, why = tensor_type(stored)
        if (fmt is None and why != "fp16") or "more bytes" in why:
            out.append(f"{name}: {why}")
    return out


def summary(work) -> dict:
    """What `write` would do with the workspace's applied recipe, without writing: whether the
    model can go to GGUF at all (`why` not), and per compressed layer its GGUF type or why GGUF
    cannot hold it; the compressed layers' bytes as written, without and with dense fallbacks."""
    try:
        check(work, dense_fallback=True)
    except UserError as e:
        return {"supported": False, "why": str(e).removeprefix("--format gguf: "), "layers": []}
    rows, exact, fallback = [], 0, 0
    for name, stored in work.stored.items():
        fmt, how = tensor_type(stored)
        (out, cols), n = stored.shape, stored.shape[0] * stored.shape[1]
        if fmt is not None:
            written = out * ggml.TYPES[fmt].row_bytes(cols)
        else:
            written = 2 * n if how == "fp16" or torch.equal(stored.matrix().half().float(), stored.matrix()) else 4 * n
        held = (fmt is not None and "more bytes" not in how) or how == "fp16"
        kind = "f16" if how == "fp16" else fmt if held else "refused"
        rows.append({"layer": name, "type": kind, "how": how,
                     "stored_bytes": stored.bytes.compressed_bytes, "written_bytes": written})
        exact += written if held else 0
        fallback += written
    return {"supported": True, "why": None, "layers": rows, "refused": sum(r["type"] == "refused" for r in rows),
            "bytes": exact, "bytes_with_fallback": fallback}


def write(work, out: str | Path, dense_fallback: bool = False) -> dict:
    """Write the workspace's applied recipe as `out`/<model>.gguf; returns a report: the file,
    its tensors (name, type, bytes), the bytes predicted for the compressed layers and those
    written for them, and the bytes dense fallbacks added."""
    import gguf

    refused = check(work, dense_fallback)
    if refused:
        raise UserError(f"--format gguf cannot hold {len(refused)} layer(s), e.g. {refused[0]}; "
                        "--dense-fallback writes them in the smallest type that holds them exactly")
    ex, config = work.explorer, work.model.config
    source = reader(gguf_file(ex.loaded.ref)) if gguf_file(ex.loaded.ref) is not None else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{Path(ex.loaded.ref).name.removesuffix('.gguf')}.gguf"
    if source is not None and path.exists() and path.samefile(gguf_file(ex.loaded.ref)):
        raise UserError(f"--out {str(out)!r}: the file would replace its own source model {str(path)!r}; "
                        "give another folder")
    # blocks of different widths: llama.cpp's 'deci' architecture (Llama blocks, counts per block)
    writer = gguf.GGUFWriter(str(path), "llama" if removal.config_holds(ex.loaded.model) else "deci")
    _metadata(writer, source, config, work)
    names = gguf_names(ex.layers, config)
    by_param = {i.param_name: i for i in ex.layers}
    head_dim = _head_dim(config)
    tensors, predicted, written, added = [], 0, 0, 0
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    working = dict(work.model.named_parameters())  # norms and the like, at the fp16 the explorer counts
    for pname, p in ex.loaded.model.named_parameters():  # every parameter, in the original's order
        p = working.get(pname, p)
        info = by_param.get(pname)
        if info is not None and info.tied_to is not None:
            continue
        mapped = name_map.get_name(pname, try_suffixes=(".weight", ".bias")) or ""
        target = (names.get(info.name) if info else None) or mapped.removesuffix(".weight")
        if not target:
            raise UserError(f"--format gguf: no GGUF name for {pname}")
        stored = work.stored.get(info.name) if info is not None else None
        fmt, data = _tensor(stored, work.holders[info.name].matrix() if info else p, p.ndim)
        if target.endswith(("attn_q", "attn_k")):  # each block's own head count (after structured pruning)
            data = data[_rope_permutation(data.shape[0], data.shape[0] // head_dim)]
        kind = gguf.GGMLQuantizationType[fmt.upper()]
        array = data.cpu().numpy()
        writer.add_tensor(f"{target}.weight" if not target.endswith(".bias") else target, array, raw_dtype=kind)
        nbytes = array.nbytes
        tensors.append({"name": target, "type": fmt, "bytes": nbytes})
        if stored is not None:
            predicted += stored.bytes.compressed_bytes
            written += nbytes
            added += nbytes - stored.bytes.compressed_bytes  # 0 where GGUF holds the layer as stored
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"file": str(path), "bytes": path.stat().st_size, "tensors": tensors,
            "predicted_bytes": predicted, "written_bytes": written, "fallback_added_bytes": added}


def _tensor(stored, values: torch.Tensor, ndim: int) -> tuple[str, torch.Tensor]:
    """(GGUF type, data): llama.cpp blocks (rows, row bytes) uint8, or float values."""
    if stored is not None:
        fmt, _ = tensor_type(stored)
        if fmt is not None and stored.matrices[0].grid.ggml is not None:
            return fmt, stored.matrices[0].grid.raw
        if fmt is not None:
            return fmt, _int_blocks(stored, fmt)
        values = stored.matrix()
    if ndim == 1:
        return "f32", values.detach().float()
    v = values.detach().float()
    return ("f16", v.half()) if torch.equal(v.half().float(), v) else ("f32", v)


def _metadata(writer, source, config, work) -> None:
    """The architecture's hyperparameters from the config; the tokenizer copied from the GGUF file
    the model came from, or else written from its Hugging Face tokenizer (gguf_vocab)."""
    import gguf

    head_dim = _head_dim(config)
    heads, kv, ff = _counts(work.explorer.loaded.model)
    writer.add_name(f"{Path(work.explorer.loaded.ref).name} ({work.applied.recipe.describe()})")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    if head_dim * config.num_attention_heads != config.hidden_size or not isinstance(heads, int):
        writer.add_key_length(head_dim)  # llama.cpp takes hidden / heads otherwise
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None) or
                                    (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_string(SOURCE_KEY, work.explorer.loaded.ref)  # for `run FILE.gguf`; llama.cpp ignores them
    writer.add_string(RECIPE_KEY, work.applied.recipe.to_json())
    if work.explorer.structure is not None:
        writer.add_string(STRUCTURE_KEY, json.dumps(work.explorer.structure.to_dict()))
    if source is None:
        gguf_vocab.write(writer, work.explorer.loaded.tokenizer, config.vocab_size)
        return
    for key, field in source.fields.items():
        if key.startswith("tokenizer."):
            _copy(writer, key, field)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _counts(model) -> tuple:
    """(query heads, key/value heads, MLP width): one number each where every block has the
    same, else one per block (llama.cpp reads either; after structured pruning blocks may differ)."""
    found = blocks.find(model)
    per = [(*blocks.heads(b, found.layout)[:2], blocks.channels(b, found.layout)) for b in found.blocks]
    return tuple(column[0] if len(set(column)) == 1 else list(column) for column in zip(*per))


def _copy(writer, key: str, field) -> None:
    import gguf

    kind = field.types[0]
    if kind == gguf.GGUFValueType.ARRAY:
        writer.add_array(key, field.contents())
    elif kind == gguf.GGUFValueType.STRING:
        writer.add_string(key, field.contents())
    else:
        writer.add_key_value(key, field.contents(), kind)



# ---------------------------------------------------------------------------------------
# Reading one back: `run FILE.gguf`
# ---------------------------------------------------------------------------------------


def reader(path: str | Path):
    """The file's gguf.GGUFReader, parsed once per version of the file (engine.models.gguf_source)."""
    return gguf_source.reader(path)


def is_export(path: str | Path) -> bool:
    """Whether a GGUF file was written by `write` (its metadata names its source model); any
    other GGUF file is a source model itself (engine.models.gguf_source)."""
    try:
        return SOURCE_KEY in reader(path).fields
    except (ValueError, IndexError, OSError):
        return False


def source_of(path: str | Path) -> tuple[str, Recipe]:
    """(the source model's ref, the recipe) a GGUF file written here names; a GGUF file from
    elsewhere is refused in one line."""
    try:
        fields = reader(path).fields
    except (ValueError, OSError) as e:
        raise UserError(f"{str(path)!r}: not a readable GGUF file ({e})") from None
    if SOURCE_KEY not in fields or RECIPE_KEY not in fields:
        raise UserError(f"{str(path)!r}: not written by this explorer's export (no {SOURCE_KEY}): "
                        "its source model is unknown")
    return fields[SOURCE_KEY].contents(), Recipe.from_json(fields[RECIPE_KEY].contents())


def load_into(work, path: str | Path):
    """Fill a workspace of the file's source model from a GGUF file written by `write`: every
    layer and parameter takes the file's values (llama.cpp's blocks dequantized by the gguf
    package, the q and k rows put back in Hugging Face's order). Returns the workspace's
    Applied, whose memory report counts the file's tensors."""
    import time

    import gguf

    t0 = time.perf_counter()
    _, recipe = source_of(path)
    field = reader(path).fields.get(STRUCTURE_KEY)
    work.use(None if field is None else removal.Structure.from_dict(json.loads(field.contents())))
    ex, config = work.explorer, work.model.config
    tensors = {t.name.removesuffix(".weight"): t for t in reader(path).tensors}
    names = gguf_names(ex.layers, config)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    head_dim = _head_dim(config)
    chosen = {i.name for i in ex.selected(recipe)}

    def read(name: str) -> tuple[str, torch.Tensor]:
        if name not in tensors:
            raise UserError(f"{str(path)!r}: no tensor {name} for model {ex.loaded.ref!r}")
        t = tensors[name]
        data = torch.from_numpy(t.data.copy())
        if name.endswith(("attn_q", "attn_k")):
            data = data[torch.argsort(_rope_permutation(data.shape[0], data.shape[0] // head_dim))]
        return t.tensor_type.name.lower(), data

    stored, alone = {}, {}
    for info in ex.layers:
        if info.tied_to is not None:
            continue
        fmt, data = read(names[info.name])
        device = ex.weight(info.name).device
        if info.name not in chosen:
            alone[info.name] = data.to(device, torch.float32)
            continue
        rows, cols = info.shape
        if fmt in ggml.TYPES:
            values, grid, nbytes = ggml.dequantize(data, fmt, cols), Grid(ggml=fmt, raw=data.to(device)), \
                ggml_bytes(rows, cols, fmt)
        else:
            values, grid = data.float(), Grid()
            nbytes = TensorBytes(data.numel() * data.element_size(), 0, 0, fmt)
        matrix = StoredMatrix(values.to(device), grid, None, rows * cols, nbytes)
        stored[info.name] = StoredLayer(info.name, info.shape, recipe.for_layer(info.name), None, (matrix,))
    params = {}
    for pname, _ in work.model.named_parameters():
        target = (name_map.get_name(pname, try_suffixes=(".weight", ".bias")) or "").removesuffix(".weight")
        params[pname] = read(target)[1].float()
    return work.hold(recipe, stored, alone, params, time.perf_counter() - t0, export=str(path))
