"""llama.cpp's quantization mixes (`llama-quantize MODEL Q4_K_M`) as per-layer recipes.

A mix is a default GGML type and the choices llama.cpp's quantize makes per tensor
(src/llama-quant.cpp, llama_tensor_get_type): the output head (and a token embedding tied to
it) takes q6_k, or q8_0 when its rows do not divide into 256-value blocks; the attention's V
projection and the FFN's down projection take a wider type in the first and last eighth of
the blocks and every third block between (`use_more_bits`); Q2_K and Q3_K_M widen the attention
output; 8-expert models widen V and K to q8_0. A row that a type's blocks do not divide takes
llama.cpp's fallback type (engine.formats.ggml.fit, applied by the pipeline to any recipe). Position and
token-type embeddings stay as they are. Tensors are told apart by their GGUF names, from the
gguf package's name map for the model's architecture.

    recipe = preset_recipe("q4_k_m", explorer.layers, config)   # a Recipe with per-layer rules
"""
from __future__ import annotations

import re

from engine.recipe.recipe import Recipe

PRESETS = {"q8_0": "q8_0", "q6_k": "q6_k", "q5_k_m": "q5_k", "q4_k_m": "q4_k", "q3_k_m": "q3_k", "q2_k": "q2_k"}
_ARCH_ALIASES = {"mistral": "llama", "mixtral": "llama"}  # as llama.cpp's converter writes them
_KEPT = ("position_embd", "token_types")  # llama.cpp does not quantize them


def gguf_names(layers, config) -> dict[str, str | None]:
    """Each layer's tensor name in a GGUF file of this architecture ('blk.3.attn_v'), or None
    where the gguf package's map for it has none (or the architecture is not one it knows)."""
    import gguf

    model_type = _ARCH_ALIASES.get(getattr(config, "model_type", ""), getattr(config, "model_type", ""))
    arch = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == model_type), None)
    if arch is None:
        return {i.name: None for i in layers}
    blocks = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 1
    names = gguf.get_tensor_name_map(arch, blocks)
    out = {}
    for i in layers:
        found = names.get_name(i.param_name, try_suffixes=(".weight",))
        out[i.name] = found.removesuffix(".weight") if found else None
    return out


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _block(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else 0


def layer_types(preset: str, layers, config) -> dict[str, str | None]:
    """Layer name -> the GGML type llama.cpp's quantize chooses for it under `preset` (before the
    fallback for rows its blocks do not divide); None: left as it is."""
    default = PRESETS[preset]
    tensor = gguf_names(layers, config)
    heads = getattr(config, "num_attention_heads", 1) or 1
    gqa = heads // (getattr(config, "num_key_value_heads", None) or heads)
    experts = getattr(config, "num_local_experts", 0) or getattr(config, "num_experts", 0) or 0
    # as llama.cpp: the token embedding is the output head's when the file has no head of its own
    tied = not any(tensor[i.name] == "output" and i.tied_to is None for i in layers)
    blocks = getattr(config, "num_hidden_layers", 1) or 1

    def category(name: str | None) -> str:
        if name is None:
            return "other"
        if name == "output" or (name == "token_embd" and tied):
            return "output"
        last = name.rsplit(".", 1)[-1]
        if last in ("attn_qkv", "attn_v", "attn_k", "attn_output"):
            return last
        return "ffn_down" if "ffn_down" in name else "other"

    by_order = sorted(layers, key=lambda i: _block(tensor[i.name] or ""))
    count = {c: len({tensor[i.name] for i in layers if category(tensor[i.name]) == c}) for c in ("attn_v", "ffn_down")}
    seen = {"attn_v": [], "ffn_down": []}
    out = {}
    for info in by_order:
        name, cat = tensor[info.name], category(tensor[info.name])
        t = default
        if name is not None and any(k in name for k in _KEPT):
            t = None
        elif cat == "output":
            blocks = 32 if default == "q8_0" else 256
            t = "q8_0" if info.shape[1] % blocks or default == "q8_0" else "q6_k"
        elif cat in ("attn_v", "ffn_down"):
            if name not in seen[cat]:
                seen[cat].append(name)
            i, n = seen[cat].index(name), count[cat]
            if cat == "ffn_down" and experts > 1:
                i, n = _block(name), blocks
            t = _attn_v(default, i, n, gqa, experts) if cat == "attn_v" else _ffn_down(default, i, n)
        elif cat == "attn_k" and experts == 8:
            t = "q8_0"
        elif cat == "attn_output":
            t = _attn_output(default, experts)
        elif cat == "attn_qkv":
            wider = {"q3_k": "q4_k", "q4_k": "q5_k", "q5_k": "q6_k"}
            t = wider.get(default, default) if preset.endswith("_m") else default
        out[info.name] = t
    return out


def _attn_v(default: str, i: int, n: int, gqa: int, experts: int) -> str:
    t = default
    if default == "q2_k":
        t = "q4_k" if gqa >= 4 else "q3_k"
    elif default == "q3_k":
        t = "q5_k" if i < 2 else "q4_k"
    elif default in ("q4_k", "q5_k") and _use_more_bits(i, n):
        t = "q6_k"
    return "q8_0" if experts == 8 else t


def _ffn_down(default: str, i: int, n: int) -> str:
    if default == "q2_k":
        return "q3_k"
    if default == "q3_k":
        return "q5_k" if i < n // 16 else "q4_k"
    if default in ("q4_k", "q5_k") and _use_more_bits(i, n):
        return "q6_k"
    return default


def _attn_output(default: str, experts: int) -> str:
    if experts == 8:
        return "q5_k" if default in ("q2_k", "q3_k", "q4_k") else default
    return {"q2_k": "q3_k", "q3_k": "q4_k"}.get(default, default)


def preset_recipe(preset: str, layers, config, base: Recipe | None = None, quant_method: str | None = None) -> Recipe:
    """The recipe of llama.cpp's mix `preset` on these layers: its default type for every layer
    (embeddings and head included), a per-layer rule for each other type; `base`'s other fields
    kept, and `quant_method` ('rtn', 'imatrix') where given."""
    if preset not in PRESETS:
        from engine.recipe.fields import RecipeError
        raise RecipeError(f"preset: must be one of {', '.join(PRESETS)}, got {preset!r}")
    types = layer_types(preset, layers, config)
    default = PRESETS[preset]
    rules = []
    for t in sorted({t for t in types.values() if t != default}, key=lambda t: (t is None, t or "")):
        names = [re.escape(n) for n, v in types.items() if v == t]
        rule = {"number_format": t} if t is not None else {"bits": 16}
        rules.append({"match": "^(" + "|".join(names) + ")$", **rule})
    fields = {"number_format": default, "include_embeddings": True, "per_layer": rules}
    if quant_method is not None:
        fields["quant_method"] = quant_method
    return (base or Recipe()).base().updated(**fields)
