"""The values a recipe field may take, and the checks and parsing shared by its fields.

Every field of engine.recipe.recipe.Recipe is declared with a `Field`: its type, a one-line help,
its choices, its command-line option and URL parameter, and whether a per-layer rule may set
it. The command line, the app and the sweep read these declarations; nothing types the
field list out again.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from engine.errors import UserError

GRANULARITIES = ("tensor", "channel", "group")
GROUPS = ("all", "attention", "mlp", "experts", "router")
BITS = (2, 3, 4, 5, 6, 7, 8, 16)
LOWRANK_METHODS = ("svd", "whitened")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")
QUANT_METHODS = ("rtn", "gptq", "kmeans", "imatrix", "hqq", "awq")
OWN_GRID_ONLY = ("hqq", "awq")  # methods that fit the explorer's own grid, not llama.cpp's blocks
# 'int': the explorer's own integer grid (bits, granularity, group size, symmetric); the rest are
# llama.cpp's GGML types (engine.formats.ggml), which fix the bits and the blocks themselves
LEGACY_FORMATS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
# the float formats of bitsandbytes, compressed-tensors and NVIDIA (engine.formats.floats)
FLOAT_FORMATS = ("nf4", "fp4", "fp8_e4m3", "fp8_e5m2", "nvfp4")
NUMBER_FORMATS = ("int", *LEGACY_FORMATS, "q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "mxfp4", *FLOAT_FORMATS)
# each GGML type's (bits of a code, values per block, symmetric), as engine.formats.ggml.TYPES defines them
FORMAT_GRID = {"q4_0": (4, 32, True), "q4_1": (4, 32, False), "q5_0": (5, 32, True), "q5_1": (5, 32, False),
               "q8_0": (8, 32, True), "q2_k": (2, 256, False), "q3_k": (3, 256, True), "q4_k": (4, 256, False),
               "q5_k": (5, 256, False), "q6_k": (6, 256, True), "mxfp4": (4, 32, True)}
# the float formats' (bits, values per block (None: a scale per output channel), symmetric), as engine.formats.floats.TYPES
FORMAT_GRID.update({"nf4": (4, 64, True), "fp4": (4, 64, True), "fp8_e4m3": (8, None, True),
                    "fp8_e5m2": (8, None, True), "nvfp4": (4, 16, True)})
DOUBLE_QUANT_FORMATS = ("nf4", "fp4")  # whose block scales double quantization may quantize
NO_IMPORTANCE = ("mxfp4",)  # llama.cpp's quantizer for these takes no importance matrix
NO_IMPORTANCE += FLOAT_FORMATS  # nor do the float formats' (round to nearest)
DISTILL_LR = 1e-4
CALIBRATED = {"whitened", "wanda", "gptq", "imatrix", "awq", "sparsegpt"}  # methods that need the calibration statistics
# Basis Sharing: layers of one kind in neighbouring blocks share one whitened basis (engine.methods.shared)
LOWRANK_METHODS = (*LOWRANK_METHODS, "shared")
CALIBRATED = CALIBRATED | {"shared"}
SHARE_BLOCKS = 2  # default blocks per group that share one basis


class RecipeError(UserError):
    """A recipe value outside its allowed range; the message names the field."""


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' -> None, 'N:M' -> (N, M). Raises RecipeError on anything else.

    >>> parse_pattern("2:4")
    (2, 4)
    """
    if pattern == "unstructured":
        return None
    m = re.fullmatch(r"(\d+):(\d+)", pattern)
    if not m:
        raise RecipeError(f"pattern: expected 'unstructured' or 'N:M' (e.g. 2:4), got {pattern!r}")
    n, m_ = int(m.group(1)), int(m.group(2))
    if not 1 <= n < m_ <= 64:
        raise RecipeError(f"pattern: N:M needs 1 <= N < M <= 64, got {pattern!r}")
    return n, m_


@dataclass(frozen=True)
class Field:
    """What a recipe field is, declared once: the command line, the app's controls and URL, the
    sweep's CSV columns and the JSON all read it from here.

    type: the value's Python type (int, float, str, bool); optional: None is allowed.
    help: one line for the command line's --help and the app's help icon.
    choices: the allowed values, where they are a fixed list.
    flag: the command-line option (default --field-name); for a bool whose default is True, the
        option that sets it False (--asymmetric).
    url: the app's URL parameter (None: not in the URL).
    per_layer: a per-layer rule may set it.
    """

    type: type
    help: str
    optional: bool = False
    choices: tuple | None = None
    flag: str | None = None
    url: str | None = None
    per_layer: bool = True


def declared(default, spec: Field):
    return dataclasses.field(default=default, metadata={"spec": spec})



def not_int(x: object) -> bool:
    return isinstance(x, bool) or not isinstance(x, int)


def not_number(x: object) -> bool:
    return isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x)


def check_regex(field: str, text: object) -> None:
    if not isinstance(text, str) or not text:
        raise RecipeError(f"{field}: must be a non-empty regular expression, got {text!r}")
    try:
        re.compile(text)
    except re.error as e:
        raise RecipeError(f"{field}: not a valid regular expression ({e})") from None


def parse_rules(rules: object, fields: dict) -> tuple:
    """Per-layer rules as JSON gives them ([{"match": regex, field: value}]) or as stored
    ((regex, ((field, value), ...)), ...) -> the stored form, checked but for the values."""
    if not isinstance(rules, (list, tuple)):
        raise RecipeError(f"per_layer: expected a list of rules, got {rules!r}")
    allowed = [f for f, spec in fields.items() if spec.per_layer]
    out = []
    for k, rule in enumerate(rules):
        if isinstance(rule, dict):
            rule = dict(rule)
            match = rule.pop("match", None)
            items = tuple(sorted(rule.items()))
        elif isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[1], (list, tuple)):
            match, items = rule[0], tuple(sorted(tuple(i) for i in rule[1]))
        else:
            raise RecipeError(f"per_layer[{k}]: expected {{\"match\": REGEX, FIELD: VALUE, ...}}, got {rule!r}")
        check_regex(f"per_layer[{k}] match", match)
        unknown = [f for f, _ in items if f not in allowed]
        if unknown or not items:
            raise RecipeError(f"per_layer[{k}]: " + (f"field(s) {', '.join(unknown)} cannot be set per layer"
                                                      if unknown else "a rule must set a field")
                              + f"; allowed: {', '.join(allowed)}")
        out.append((match, items))
    return tuple(out)




def check_shared(r) -> None:
    """What a shared basis cannot hold, refused in one line naming the field: the basis is one
    matrix stored once, so every step that would treat it per layer (GPTQ, AWQ, Wanda and
    SparseGPT use one layer's inputs, distillation trains each layer apart) would make it differ between layers."""
    if not_int(r.share_blocks) or not 2 <= r.share_blocks <= 64:
        raise RecipeError(f"share_blocks: must be an integer from 2 to 64, got {r.share_blocks!r}")
    if r.lowrank_method != "shared":
        if r.share_blocks != SHARE_BLOCKS:
            raise RecipeError("share_blocks: only with lowrank_method shared")
        return
    if r.rank is None and r.rank_ratio is None:
        return
    if r.bits < 16 and r.quant_method in ("gptq", "awq"):
        raise RecipeError(f"quant_method: {r.quant_method} quantizes each layer's factors with its own inputs; a "
                          "shared basis is quantized once (use rtn, hqq or kmeans with lowrank_method shared)")
    if r.sparsity > 0 and r.prune_method in ("wanda", "sparsegpt"):
        raise RecipeError(f"prune_method: {r.prune_method} prunes by one layer's inputs; a shared basis is pruned "
                          "once (use magnitude with lowrank_method shared)")
    if r.distill_steps:
        raise RecipeError("distill_steps: distillation trains each layer apart and would split a shared basis")


_QUANT_DEFAULTS = {"bits": 16, "granularity": "group", "group_size": 128, "symmetric": True}


def format_fields(r) -> dict:
    """The quantization fields recipe `r`'s number format fixes (bits, blocks, symmetric; none for
    'int'). A field left at its default takes the format's value; one set otherwise, or a
    method the format cannot hold, is a RecipeError naming it."""
    fmt = r.number_format
    if fmt not in NUMBER_FORMATS:
        raise RecipeError(f"number_format: must be one of {', '.join(NUMBER_FORMATS)}, got {fmt!r}")
    if not isinstance(r.double_quant, bool):
        raise RecipeError(f"double_quant: must be true or false, got {r.double_quant!r}")
    if r.double_quant and fmt not in DOUBLE_QUANT_FORMATS:
        raise RecipeError(f"double_quant: only with number format nf4 or fp4 (it quantizes their block scales), "
                          f"got {fmt}")
    if fmt == "int":
        if r.quant_method == "imatrix":
            raise RecipeError("quant_method: imatrix weights llama.cpp's quantizers; give a number_format "
                              "such as q4_k")
        return {}
    bits, block, symmetric = FORMAT_GRID[fmt]
    fixed = {"bits": bits, "granularity": "group" if block else "channel",
             "group_size": block or _QUANT_DEFAULTS["group_size"], "symmetric": symmetric}
    for field, value in fixed.items():
        if getattr(r, field) not in (value, _QUANT_DEFAULTS[field]):
            raise RecipeError(f"{field}: number format {fmt} fixes it at {value!r}, got {getattr(r, field)!r} "
                              f"(leave {field} out)")
    if r.quant_method in OWN_GRID_ONLY:
        raise RecipeError(f"quant_method: {r.quant_method} fits the explorer's own grid, not {fmt}'s blocks "
                          "(use number_format int)")
    if r.quant_method == "kmeans" or (r.quant_method == "gptq" and fmt not in LEGACY_FORMATS) or (
            r.quant_method == "imatrix" and fmt in NO_IMPORTANCE):
        raise RecipeError(f"quant_method: {r.quant_method} does not run on {fmt}"
                          + (f" (GPTQ runs on {', '.join(LEGACY_FORMATS)})" if r.quant_method == "gptq" else ""))
    if r.act_order:
        raise RecipeError(f"act_order: not with number format {fmt} (its blocks take their scales as GPTQ reaches them)")
    if r.rank is not None or (r.rank_ratio is not None and r.rank_ratio < 1) or r.sparsity > 0:
        raise RecipeError(f"number_format: {fmt} stores every value of a full matrix"
                          + ("" if fmt in FLOAT_FORMATS else ", as llama.cpp does")
                          + ": no low rank or pruning with it (use number_format int)")
    if r.distill_steps:
        raise RecipeError(f"distill_steps: distillation keeps values on the explorer's own grids, not on {fmt}")
    return fixed


def format_update(current: dict, fields: dict) -> dict:
    """What `Recipe.updated(**fields)` changes besides `fields` when a number format is given or
    left: a llama.cpp format given alone takes its own bits and blocks, and methods it cannot
    hold go back to round to nearest; a bit width or grid given alone means the 'int' format."""
    grid = {f for f in _QUANT_DEFAULTS if f in fields}
    out = {}
    fmt = fields.get("number_format", current["number_format"] if not grid else "int")
    if "number_format" not in fields and grid:
        out["number_format"] = "int"
    if "number_format" in fields and fmt != "int":
        out.update({f: v for f, v in _QUANT_DEFAULTS.items() if f not in fields})
        if "act_order" not in fields:
            out["act_order"] = False
    if fmt not in DOUBLE_QUANT_FORMATS and "double_quant" not in fields:
        out["double_quant"] = False
    method = fields.get("quant_method", current["quant_method"])
    if "quant_method" not in fields and (
            (fmt == "int" and method == "imatrix")
            or (fmt != "int" and (method == "kmeans" or (method == "gptq" and fmt not in LEGACY_FORMATS)
                                  or (method == "imatrix" and fmt in NO_IMPORTANCE)))):
        out["quant_method"] = "rtn"
    if "quant_method" not in fields and fmt != "int" and method in OWN_GRID_ONLY:
        out["quant_method"] = "rtn"
    return out
