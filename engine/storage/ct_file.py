"""A workspace's compressed model as a Hugging Face folder in compressed-tensors' `pack-quantized`
format: what `AutoModelForCausalLM.from_pretrained(folder)` loads (with the `compressed-tensors`
package) and vLLM serves.

Each compressed `nn.Linear` whose stored grid compressed-tensors has goes in as its codes and
scales: the explorer's symmetric integer grid at 4 or 8 bits, per group or per output channel,
and llama.cpp's q4_0 and q8_0 (a symmetric grid in groups of 32); fp8_e4m3 as compressed-tensors'
`float-quantized` (float8 `weight`, fp32 `weight_scale` per row) and nvfp4 as its
`nvfp4-pack-quantized` (`weight_packed`, E4M3 `weight_scale`, `weight_global_scale`), each config
group naming its format. Asymmetric grids are refused:
compressed-tensors 0.20 packs their zero-points, which transformers 5.23 then refuses to load
(its placeholder expects them unpacked; measured).

`weight_packed` holds the signed codes packed into int32 (compressed-tensors' `pack_to_int32`),
`weight_scale` the fp16 scales (rows, groups), `weight_shape` the matrix's shape; `config.json`
gets a `quantization_config` with one config group per grid, whose targets name its layers.
Everything else is fp16. What the format cannot hold (low rank, pruning, k-means, other widths,
llama.cpp's other types, GPT-2's Conv1D, experts' 3-D parameters) is refused in one line naming
the layer, or with `dense_fallback` written as a dense fp16 weight (fp32 where fp16 would round
it).

    report = write(work, "out/")   # out/config.json, out/model.safetensors, the tokenizer
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from engine.errors import UserError
from engine.formats.ggml import legacy
from engine.formats.grid import code_offset, per_entry, quantize
from engine.structure import removal

META = "explorer.json"  # the source model and the recipe, for `run DIR`
# the float formats compressed-tensors holds: its FP8 per channel and its NVFP4 (NVFP4A16's weights)
FLOAT_ARGS = {"fp8_e4m3": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "group_size": None},
              "nvfp4": {"num_bits": 4, "type": "float", "symmetric": True, "strategy": "tensor_group", "group_size": 16,
                        "scale_dtype": "torch.float8_e4m3fn"}}


def _format(args: dict) -> str:
    """The compressed-tensors format a config group's weights are stored in."""
    if args["type"] == "float":
        return "float-quantized" if args["num_bits"] == 8 else "nvfp4-pack-quantized"
    return "pack-quantized"


def _float_tensors(name: str, m) -> dict:
    """An fp8_e4m3 or nvfp4 matrix's tensors as compressed-tensors names and types them."""
    p = m.grid.parts
    if m.grid.floats == "fp8_e4m3":
        return {f"{name}.weight": p["codes"].view(torch.float8_e4m3fn).cpu(),
                f"{name}.weight_scale": p["scales"].reshape(-1, 1).cpu()}
    return {f"{name}.weight_packed": p["codes"].cpu(), f"{name}.weight_scale": p["scales"].view(torch.float8_e4m3fn).cpu(),
            f"{name}.weight_global_scale": p["global_scale"].cpu()}


def scheme(stored, info) -> tuple[dict | None, str]:
    """The compressed-tensors weight arguments of a compressed layer, or None and why not."""
    r = stored.recipe
    (m, *more) = stored.matrices
    if info.role != "linear":
        return None, f"a {info.role} layer (compressed-tensors quantizes nn.Linear modules)"
    if more or m.keep is not None:
        return None, "low rank" if more else "pruned"
    if m.grid.ggml is not None:
        if m.grid.ggml not in ("q4_0", "q8_0"):
            return None, f"llama.cpp's {m.grid.ggml} (no compressed-tensors grid holds it)"
        bits = 4 if m.grid.ggml == "q4_0" else 8
        return {"num_bits": bits, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32}, ""
    if m.grid.floats is not None:
        if m.grid.floats not in FLOAT_ARGS:
            return None, f"{m.grid.floats} (compressed-tensors here: fp8_e4m3 and nvfp4 of the float formats)"
        return dict(FLOAT_ARGS[m.grid.floats]), ""
    if m.grid.channel is not None:
        return None, "AWQ's channel scales (stored per layer; no compressed-tensors field holds them)"
    if m.grid.codebook is not None or m.grid.scale is None:
        return None, "a k-means codebook" if m.grid.codebook is not None else "fp16"
    if r.bits not in (4, 8) or r.granularity == "tensor":
        return None, f"int{r.bits} {r.granularity} (compressed-tensors here: 4 or 8 bits, per group or channel)"
    if not r.symmetric:  # compressed-tensors 0.20 packs zero-points that transformers 5.23 then refuses to load
        return None, f"int{r.bits} asymmetric (packed zero-points do not load back through transformers)"
    if r.granularity == "group" and m.values.shape[1] % r.group_size:
        return None, f"groups of {r.group_size} do not divide {m.values.shape[1]}"
    args = {"num_bits": r.bits, "type": "int", "symmetric": r.symmetric,
            "strategy": r.granularity, "group_size": r.group_size if r.granularity == "group" else None}
    return args, ""


def _codes(stored, args) -> tuple[torch.Tensor, torch.Tensor]:
    """(signed codes (rows, cols) int8, scales (rows, groups) fp16) of a symmetric grid."""
    (m,) = stored.matrices
    rows, cols = m.values.shape
    half = 1 << (args["num_bits"] - 1)
    if m.grid.ggml is not None:  # q4_0 / q8_0: value = (q - offset) d
        blocks = m.grid.raw.reshape(rows * cols // 32, -1)
        d = blocks[:, :2].contiguous().view(torch.float16).reshape(rows, cols // 32)
        q = legacy.recode(m.grid.ggml, m.values.reshape(-1, 32).float(), d.reshape(-1, 1).float(), None)
        q = q - (8 if m.grid.ggml == "q4_0" else 0)
        return q.reshape(rows, cols).to(torch.int8), d
    r = stored.recipe
    scale, zero = per_entry((m.grid.scale, m.grid.zero), rows, cols, r.granularity, r.group_size)
    offset = code_offset(zero, r.bits, r.symmetric)
    codes = quantize(m.values.float(), scale.float(), offset, r.bits) - half  # stored unsigned, here signed
    return codes.to(torch.int8), m.grid.scale.reshape(rows, -1).half()


def summary(work) -> dict:
    """What `write` would do with the workspace's applied recipe, without writing: per compressed
    layer its scheme or why the format cannot hold it, and the codes and scales' bytes."""
    infos = {i.name: i for i in work.explorer.layers}
    rows, held = [], 0
    for name, stored in work.stored.items():
        args, why = scheme(stored, infos[name])
        kind = f"{args['type']}{args['num_bits']} {args['strategy']}" if args else ("f16" if why == "fp16" else "refused")
        rows.append({"layer": name, "type": kind, "how": why})
        held += stored.bytes.compressed_bytes if args else 0
    return {"supported": True, "why": None, "layers": rows, "refused": sum(r["type"] == "refused" for r in rows),
            "bytes": held}


def write(work, out: str | Path, dense_fallback: bool = False) -> dict:
    """Write the workspace's applied recipe as a compressed-tensors folder at `out`; returns a
    report: the bytes of the compressed layers' tensors as written, beside the explorer's count."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import save_file

    ex = work.explorer
    if ex.structure is not None and not removal.config_holds(ex.loaded.model):
        raise UserError("--format compressed-tensors: transformers builds a model from one head count and one MLP "
                        "width for every block (and BERT's head width from its head count); this smaller model's "
                        "blocks differ (use the explorer's own export, or GGUF for a Llama-family model)")
    infos = {i.name: i for i in ex.layers}
    refused, groups, tensors, written, predicted = [], {}, {}, 0, 0
    for name, stored in work.stored.items():
        args, why = scheme(stored, infos[name])
        if args is None:
            if why != "fp16":
                refused.append(f"{name}: {why}")
            continue
        if args["type"] == "float":
            part = _float_tensors(name, stored.matrices[0])
        else:
            q, scale = _codes(stored, args)
            part = {f"{name}.weight_packed": pack_to_int32(q.cpu(), args["num_bits"]),
                    f"{name}.weight_scale": scale.cpu().contiguous(),
                    f"{name}.weight_shape": torch.tensor(list(q.shape), dtype=torch.int32)}
        tensors.update(part)
        written += sum(t.numel() * t.element_size() for k, t in part.items() if not k.endswith("weight_shape"))
        # (weight_shape, 8 bytes a layer, is metadata the explorer's count has no place for)
        predicted += stored.bytes.compressed_bytes
        groups.setdefault(json.dumps(args, sort_keys=True), []).append(name)
    if refused and not dense_fallback:
        raise UserError(f"--format compressed-tensors cannot hold {len(refused)} layer(s), e.g. {refused[0]}; "
                        "--dense-fallback writes them dense")
    quantized = {n for names in groups.values() for n in names}
    working = dict(work.model.named_parameters())
    for pname, p in ex.loaded.model.named_parameters():
        layer = pname.removesuffix(".weight")
        if layer in quantized:
            continue
        value = work.holders[layer].matrix() if layer in infos and layer in work.holders else working.get(pname, p)
        if layer in infos and infos[layer].role == "conv1d":
            value = value.t()  # back to Conv1D's (in, out)
        v = value.detach().float().cpu()
        tensors[pname] = (v.half() if torch.equal(v.half().float(), v) else v).contiguous()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    config = ex.loaded.model.config.to_dict()
    config["torch_dtype"] = "float16"
    formats = {_format(json.loads(args)) for args in groups} or {"pack-quantized"}
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "quantization_status": "compressed",
        "format": formats.pop() if len(formats) == 1 else "mixed-precision",
        "config_groups": {f"group_{k}": {"targets": ["re:^(" + "|".join(re.escape(n) for n in names) + ")$"],
                                         "weights": {**json.loads(args), "dynamic": False},
                                         "format": _format(json.loads(args))}
                          for k, (args, names) in enumerate(groups.items())},
        "ignore": []}
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    ex.loaded.tokenizer.save_pretrained(out)
    (out / META).write_text(json.dumps({"source": ex.loaded.ref, "recipe": work.applied.recipe.to_dict(),
                                        "structure": ex.structure and ex.structure.to_dict()}), encoding="utf-8")
    return {"folder": str(out), "layers": len(quantized), "dense_fallback": len(refused),
            "predicted_bytes": predicted, "written_bytes": written}


# ---------------------------------------------------------------------------------------
# Reading one back: `run FOLDER`
# ---------------------------------------------------------------------------------------


def is_folder(path: str | Path) -> bool:
    """Whether `path` is a folder this module wrote (its config says compressed-tensors, and
    explorer.json names the source)."""
    path = Path(path)
    if not (path / META).is_file() or not (path / "config.json").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (config.get("quantization_config") or {}).get("quant_method") == "compressed-tensors"


def source_of(path: str | Path):
    """(the source model's ref, the recipe) of a folder written by `write`."""
    from engine.recipe.recipe import Recipe

    meta = json.loads((Path(path) / META).read_text(encoding="utf-8"))
    return meta["source"], Recipe.from_dict(meta["recipe"])


def load_into(work, path: str | Path):
    """Fill a workspace of the folder's source model from the folder: each packed layer's codes
    unpacked (compressed-tensors' `unpack_from_int32`) times its scales, on the grid the recipe
    names; every other tensor as written. Returns the workspace's Applied."""
    import time

    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    from engine.formats.grid import Grid
    from engine.pipeline.compress import StoredLayer, StoredMatrix
    from engine.pipeline.compress import predict as predict_layer

    t0 = time.perf_counter()
    _, recipe = source_of(path)
    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))["quantization_config"]
    bits = {}
    for group in config["config_groups"].values():
        names = group["targets"][0].removeprefix("re:^(").removesuffix(")$").split("|")
        bits.update({re.sub(r"\\(.)", r"\1", n): group["weights"]["num_bits"] for n in names})
    tensors = load_file(str(Path(path) / "model.safetensors"))
    structure = json.loads((Path(path) / META).read_text(encoding="utf-8")).get("structure")
    work.use(structure and removal.Structure.from_dict(structure))
    ex = work.explorer
    chosen = {i.name for i in ex.selected(recipe)}
    stored, alone = {}, {}
    for info in ex.layers:
        if info.tied_to is not None:
            continue
        device = ex.weight(info.name).device
        if info.name not in bits:
            dense = tensors[info.param_name].float().to(device)
            if info.name in chosen:  # written dense: an unquantized layer or the dense fallback
                counted = predict_layer(info, recipe.for_layer(info.name)).bytes.parts[0]
                m = StoredMatrix(dense, Grid(), None, dense.numel(), counted)
                stored[info.name] = StoredLayer(info.name, info.shape, recipe.for_layer(info.name), None, (m,))
            else:
                alone[info.name] = dense
            continue
        if recipe.for_layer(info.name).number_format in FLOAT_ARGS:
            stored[info.name] = _float_layer(info, recipe.for_layer(info.name), tensors, device)
            continue
        rows, cols = info.shape
        q = unpack_from_int32(tensors[f"{info.name}.weight_packed"], bits[info.name], torch.Size([rows, cols]))
        scale = tensors[f"{info.name}.weight_scale"].float()  # (rows, groups)
        per = scale.repeat_interleave(cols // scale.shape[1], dim=1)
        values = (q.float() * per).to(device)
        lr = recipe.for_layer(info.name)
        if lr.number_format in ("q4_0", "q8_0"):
            fmt = lr.number_format
            raw = legacy.pack(fmt, (q.float() + (8 if fmt == "q4_0" else 0)).reshape(-1, 32), scale.reshape(-1), None)
            grid = Grid(ggml=fmt, raw=raw.reshape(rows, -1).to(device))
        else:
            grid = Grid(scale.reshape(-1).to(device), torch.zeros(scale.numel(), device=device))
        m = StoredMatrix(values, grid, None, rows * cols, predict_layer(info, lr).bytes.parts[0])
        stored[info.name] = StoredLayer(info.name, info.shape, lr, None, (m,))
    params = {n: tensors[n].float() for n, _ in work.model.named_parameters()}
    return work.hold(recipe, stored, alone, params, time.perf_counter() - t0, export=str(path))


def _float_layer(info, recipe, tensors: dict, device):
    """A layer written in fp8_e4m3 or nvfp4, read back into the explorer's float format."""
    from engine.formats import floats
    from engine.formats.grid import Grid
    from engine.pipeline.compress import StoredLayer, StoredMatrix, predict

    n, fmt = info.name, recipe.number_format
    if fmt == "fp8_e4m3":
        parts = {"codes": tensors[f"{n}.weight"].view(torch.uint8), "scales": tensors[f"{n}.weight_scale"].flatten()}
    else:
        parts = {"codes": tensors[f"{n}.weight_packed"], "scales": tensors[f"{n}.weight_scale"].view(torch.uint8),
                 "global_scale": tensors[f"{n}.weight_global_scale"]}
    parts = {k: v.to(device) for k, v in parts.items()}
    m = StoredMatrix(floats.dequantize(parts, fmt, info.shape), Grid(floats=fmt, parts=parts), None,
                     info.shape[0] * info.shape[1], predict(info, recipe).bytes.parts[0])
    return StoredLayer(n, info.shape, recipe, None, (m,))
