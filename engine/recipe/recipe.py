"""The recipe: one frozen, validated description of a compression setting.

A recipe is data. It round-trips through JSON (`to_json` / `from_json`), rejects unknown
fields, and checks every value on construction, naming the field and the allowed range.
It holds no runtime state: which layers exist, their ranks and bytes are worked out
elsewhere from a recipe and a model.

Order on one layer: low rank first (the layer then stores factors A and B), pruning then
zeroes entries of what is stored, quantization then codes the kept values.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass

from engine.formats import FORMATS
from engine.methods import METHODS, names
from engine.methods import calibrated as calibrated_methods
from engine.recipe.label import label
from engine.recipe.fields import (
    BITS,
    DISTILL_LR,
    GRANULARITIES,
    GROUPS,
    SHARE_BLOCKS,
    STRUCTURE_IMPORTANCE,
    Field,
    RecipeError,
    check_regex,
    check_shared,
    declared,
    format_fields,
    format_update,
    parse_indices,
    parse_pattern,
    parse_rules,
)


def _formats_help() -> str:
    """'int: the explorer's own grid (default); a llama.cpp type: q4_0 ...; or a float format: nf4 ...'."""
    family = {fam: " ".join(f.name for f in FORMATS.values() if f.family == fam) for fam in ("ggml", "float")}
    return (f"int: the explorer's own grid (default); a llama.cpp type: {family['ggml']}; "
            f"or a float format: {family['float']}")


def _methods_help(kind: str) -> str:
    """'svd: plain truncation (default); whitened: ...', from the methods table."""
    return "; ".join(f"{m.name}: {m.help}" for m in METHODS.values() if m.kind == kind)


@dataclass(frozen=True)
class Recipe:
    """What to do to every selected layer.

    rank / rank_ratio: truncated SVD at this rank (capped at the layer's full rank) or at
        this fraction of each layer's full rank; at full rank the layer stays dense, since
        the factorization is then exact and never smaller. Both None: no low rank.
    bits: 2..8 for round-to-nearest fake quantization, 16 for none.
    granularity: one scale per 'tensor', per output 'channel', or per 'group' of
        `group_size` consecutive input values.
    symmetric: False adds a b-bit zero-point per group.
    number_format: 'int' (the explorer's own integer grid, set by bits, granularity, group_size
        and symmetric) or one of llama.cpp's GGML types (q4_0 ... q8_0, q2_k ... q6_k, see
        engine.formats.ggml), which fix those four fields themselves; a row its blocks do not divide
        takes llama.cpp's fallback type; or a float format (nf4, fp4, fp8_e4m3, fp8_e5m2, nvfp4,
        see engine.formats.floats). No low rank, pruning or distillation with them.
    double_quant: nf4 / fp4 only: their fp32 block scales stored as 8-bit codes (QLoRA).
    sparsity: fraction of stored values zeroed by magnitude, exactly round(S x n) per tensor.
    pattern: 'unstructured', or 'N:M' (keep N of every M consecutive input values);
        with N:M the sparsity is 1 - N/M.
    include_embeddings: also compress the input embeddings and the output head.
    group: 'all' (every layer but the routers of mixture-of-experts models), or only the
        'attention', 'mlp', 'experts' (the routed experts) or 'router' layers.
    layers: a regular expression; only layers whose name it matches (re.search) are
        compressed. None: all compressible layers. Both group and layers must select a layer.
    lowrank_method: 'svd' (plain truncation) or 'whitened' (truncation-aware SVD on whitened
        calibration inputs, SVD-LLM); same rank, same bytes. 'shared': layers of one kind in
        `share_blocks` neighbouring blocks share one whitened basis (engine.methods.shared), at a rank
        that stores no more than 'whitened' would.
    share_blocks: with 'shared', how many neighbouring blocks form one group (2..64).
    prune_method: 'magnitude' (smallest |W| in the tensor) or 'wanda' (smallest |W| x input
        column norm, per output row); with an N:M pattern, the score picks the N of each M.
        'sparsegpt': pruning with the weight update through the inverse input Hessian (the
        GPTQ loop), the mask picked per block of columns; same count, same bytes.
    quant_method: 'rtn' (round to nearest), 'gptq' (rounding with error feedback through the
        inverse input Hessian; same grid and bytes as rtn) or 'kmeans' (a per-layer codebook of
        2^bits shared values; granularity and group size do not apply).
        'hqq': half-quadratic fit of each group's scale and zero-point, no calibration (same
        grid and bytes as rtn); 'awq': input channels scaled by their activation magnitude
        before round to nearest, the scales folded into the norm or linear before where the
        architecture allows (engine.drivers.awq_fold), else stored beside the grid in fp16.
    act_order: GPTQ only: quantize columns by decreasing input energy (static groups).
    distill_steps: after compression, this many steps of knowledge distillation from the
        uncompressed model on the calibration text (engine.drivers.distill); 0: none. Same bytes.
    distill_lr: the learning rate of those steps (Adam).
    per_layer: rules that give some of the selected layers their own settings (a plan): each
        rule is {"match": REGEX, FIELD: VALUE, ...}; a layer takes the fields of the first rule
        whose regex it matches (re.search), the rest from this recipe (see `for_layer`).
        In JSON a list of objects; in Python a tuple of (regex, ((field, value), ...)).
    """

    rank: int | None = declared(None, Field(int, "truncated-SVD rank per layer (capped at its full rank)", True,
                                            bounds="[1, inf)"))
    rank_ratio: float | None = declared(None, Field(
        float, "rank as a fraction of each layer's full rank, (0, 1]", True, bounds="(0, 1]", url="rank"))
    bits: int = declared(16, Field(int, "2-8, or 16 for no quantization (default 16)", choices=BITS, url="bits"))
    granularity: str = declared("group", Field(
        str, "one scale per tensor, output channel or group (default group)", choices=GRANULARITIES,
        url="granularity"))
    group_size: int = declared(128, Field(int, "input values per quantization group (default 128)",
                                          bounds="[1, 1048576]", url="group"))
    symmetric: bool = declared(True, Field(bool, "add a zero-point per group", flag="--asymmetric", url="sym"))
    number_format: str = declared("int", Field(
        str, _formats_help(), choices=lambda: tuple(FORMATS), url="format"))
    double_quant: bool = declared(False, Field(
        bool, "nf4/fp4: quantize the block scales to 8 bits (QLoRA's double quantization)", url="dq"))
    sparsity: float = declared(0.0, Field(float, "fraction of weights pruned, [0, 1)", bounds="[0, 1)",
                                          url="sparsity"))
    pattern: str = declared("unstructured", Field(str, "unstructured (default) or N:M, e.g. 2:4", url="pattern"))
    include_embeddings: bool = declared(False, Field(
        bool, "also compress embeddings and the output head", url="emb", per_layer=False))
    group: str = declared("all", Field(
        str, "compress all layers but routers (default), or only the attention, MLP, expert or router layers", choices=GROUPS,
        url="layers", per_layer=False))
    layers: str | None = declared(None, Field(
        str, "regular expression: compress only layers whose name matches", True, url="filter", per_layer=False))
    lowrank_method: str = declared("svd", Field(
        str, _methods_help("lowrank"), choices=lambda: names("lowrank"), url="lowrank"))
    share_blocks: int = declared(SHARE_BLOCKS, Field(
        int, "shared: neighbouring blocks whose layers of one kind share one basis (default 2)", bounds="[2, 64]", url="share",
        per_layer=False))
    prune_method: str = declared("magnitude", Field(
        str, _methods_help("prune"), choices=lambda: names("prune"), url="prune"))
    quant_method: str = declared("rtn", Field(
        str, _methods_help("quant"), choices=lambda: names("quant"), url="quant"))
    act_order: bool = declared(False, Field(bool, "gptq: quantize columns by decreasing input energy", url="actorder"))
    distill_steps: int = declared(0, Field(
        int, "after compressing, N steps of distillation from the original on calibration text (default 0)",
        bounds="[0, 100000]", per_layer=False))
    distill_lr: float = declared(DISTILL_LR, Field(
        float, "learning rate of those steps (Adam, default 1e-4)", bounds="(0, 1]", per_layer=False))
    schedule_steps: int = declared(0, Field(
        int, "gradual pruning: reach the pruning targets in N steps (Distiller's schedule), distill_steps of "
        "distillation after each (default 0: at once)", bounds="[0, 64]", url="sched", per_layer=False))
    prune_heads: float = declared(0.0, Field(
        float, "structured: fraction of each block's attention heads removed (whole key/value groups), [0, 1)",
        bounds="[0, 1)", url="heads"))
    prune_channels: float = declared(0.0, Field(
        float, "structured: fraction of each block's MLP channels removed (gate, up and down alike), [0, 1)",
        bounds="[0, 1)", url="channels"))
    prune_blocks: int = declared(0, Field(
        int, "structured: remove this many whole blocks, the least important (default 0)", bounds="[0, inf)",
        url="blocks", per_layer=False))
    remove_blocks: str | None = declared(None, Field(
        str, "structured: remove these blocks instead, comma-separated indices (e.g. 3,4,5)", True,
        url="drop", per_layer=False))
    structure_importance: str = declared("calibration", Field(
        str, "structured: what ranks heads, channels and blocks: calibration (output change on the calibration "
        "text; blocks by ShortGPT's block influence) or magnitude (weights alone)",
        choices=STRUCTURE_IMPORTANCE, url="importance", per_layer=False))
    per_layer: tuple = declared((), Field(
        tuple, "per-layer rules (a plan): [{\"match\": REGEX, FIELD: VALUE, ...}], first match wins",
        flag="", per_layer=False))

    @classmethod
    def fields(cls) -> dict[str, Field]:
        """Field name -> its declaration, in order."""
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}

    def __post_init__(self) -> None:
        for name, spec in self.fields().items():
            if name != "per_layer":
                spec.check(name, getattr(self, name))
        if self.rank is not None and self.rank_ratio is not None:
            raise RecipeError("rank: give either rank or rank_ratio, not both")
        nm = parse_pattern(self.pattern)
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.sparsity == 0:
                object.__setattr__(self, "sparsity", implied)
            elif not math.isclose(self.sparsity, implied, abs_tol=1e-9):
                raise RecipeError(f"sparsity: pattern {self.pattern} means sparsity {implied:g}; "
                                  f"got {self.sparsity!r} (leave sparsity out)")
        if self.act_order and self.quant_method != "gptq":
            raise RecipeError("act_order: only with quant_method gptq")
        for field, value in format_fields(self).items():
            object.__setattr__(self, field, value)
        check_shared(self)
        if self.layers is not None:
            check_regex("layers", self.layers)
        if self.schedule_steps:
            if self.schedule_steps == 1 or self.per_layer or not (self.sparsity > 0 or self.structured):
                raise RecipeError("schedule_steps: " + (
                    "0 (at once) or at least 2 steps" if self.schedule_steps == 1 else
                    "per-layer rules are not scheduled (their names would match other blocks once blocks go)"
                    if self.per_layer else "the recipe prunes nothing to schedule"))
        if self.remove_blocks is not None:
            self.block_indices()
            if self.prune_blocks:
                raise RecipeError("remove_blocks: give either prune_blocks (a count) or remove_blocks (indices), not both")
        object.__setattr__(self, "per_layer", parse_rules(self.per_layer, self.fields()))
        for k, (match, items) in enumerate(self.per_layer):
            try:
                self.base().updated(**dict(items))
            except RecipeError as e:
                raise RecipeError(f"per_layer[{k}] ({match}): {e}") from None

    # -- derived values -------------------------------------------------------------------
    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def structure_key(self) -> tuple:
        """What a layer's shape (low rank and pruning mask) depends on: recipes equal on it
        differ only in quantization."""
        return (self.rank, self.rank_ratio, self.sparsity, self.pattern, self.lowrank_method, self.prune_method,
                self.share_blocks)

    @property
    def calibrated(self) -> bool:
        """Whether a method in use (here or in a per-layer rule) needs the calibration statistics."""
        return any(bool(r.methods_used() & calibrated_methods()) for r in (self, *self.rule_recipes()))

    @property
    def structured(self) -> bool:
        """Whether the recipe removes heads, channels or blocks (here or in a per-layer rule)."""
        return bool(self.prune_blocks or self.remove_blocks) or any(
            r.prune_heads or r.prune_channels for r in (self, *self.rule_recipes()))

    def removal_key(self) -> tuple:
        """What the smaller model of a structured recipe depends on (engine.structure.removal)."""
        rules = tuple((m, tuple(i for i in items if i[0] in ("prune_heads", "prune_channels")))
                      for m, items in self.per_layer)
        return (self.prune_heads, self.prune_channels, self.prune_blocks, self.remove_blocks,
                self.structure_importance, tuple(r for r in rules if r[1]))

    def block_indices(self) -> tuple[int, ...]:
        """`remove_blocks` as sorted indices.

        >>> Recipe(remove_blocks="5, 3,4").block_indices()
        (3, 4, 5)
        """
        return parse_indices(self.remove_blocks or "")

    def methods_used(self) -> set[str]:
        """The methods this recipe (its own fields, not its rules) runs."""
        return {self.quant_method if self.bits < 16 else "rtn",
                self.prune_method if self.sparsity > 0 else "magnitude",
                self.lowrank_method if (self.rank or self.rank_ratio) else "svd"}

    # -- per-layer rules ------------------------------------------------------------------
    def base(self) -> "Recipe":
        """This recipe without its per-layer rules."""
        return dataclasses.replace(self, per_layer=()) if self.per_layer else self

    def updated(self, **fields) -> "Recipe":
        """This recipe with `fields` changed as a user means them: a rank clears the rank ratio
        and the other way round, an N:M pattern given without a sparsity sets it, and a
        quantization method other than GPTQ given alone turns act-order off.

        >>> Recipe(rank=64, pattern="2:4").updated(rank_ratio=0.5, pattern="4:8").describe()
        'rank x0.5 · 4:8'
        """
        d = self.to_dict()
        if fields.get("rank") is not None:
            d["rank_ratio"] = None
        if fields.get("rank_ratio") is not None:
            d["rank"] = None
        if fields.get("pattern") not in (None, "unstructured") and "sparsity" not in fields:
            d["sparsity"] = 0.0  # the pattern sets it
        if fields.get("quant_method") not in (None, "gptq") and "act_order" not in fields:
            d["act_order"] = False
        d.update(format_update(d, fields))
        if fields.get("lowrank_method") not in (None, "shared") and "share_blocks" not in fields:
            d["share_blocks"] = SHARE_BLOCKS
        return Recipe.from_dict({**d, **fields})

    def for_layer(self, name: str) -> "Recipe":
        """The recipe layer `name` is compressed with: the first per-layer rule it matches
        applied to this recipe's fields, or these fields alone (never with rules)."""
        return _for_layer(self, name) if self.per_layer else self

    def rule_recipes(self) -> list["Recipe"]:
        """The recipe of each per-layer rule."""
        return [self.base().updated(**dict(items)) for _, items in self.per_layer]

    def rank_for(self, full_rank: int) -> int | None:
        """The rank a layer of this full rank gets, or None when it stays unfactorized.

        >>> Recipe(rank_ratio=0.5).rank_for(384), Recipe(rank=999).rank_for(384)
        (192, None)
        """
        if self.rank is not None:
            r = min(self.rank, full_rank)
        elif self.rank_ratio is not None:
            r = max(1, min(full_rank, round(self.rank_ratio * full_rank)))
        else:
            return None
        return None if r >= full_rank else r

    def selects(self, name: str, group: str = "other") -> bool:
        """Whether a layer of this name and group ('attention' | 'mlp' | 'experts' | 'router' |
        'other') is compressed (routers: see engine.layers.find.select)."""
        if self.group != "all" and group != self.group:
            return False
        return self.layers is None or re.search(self.layers, name) is not None

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Plain JSON-ready data; `per_layer` as a list of {"match": regex, field: value} objects."""
        d = {f: getattr(self, f) for f in self.fields()}
        d["per_layer"] = [{"match": match, **dict(items)} for match, items in self.per_layer]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: object) -> "Recipe":
        if not isinstance(data, dict):
            raise RecipeError("recipe: expected a JSON object of recipe fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(
                f"recipe: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecipeError(f"recipe: not valid JSON ({e})") from None
        return cls.from_dict(data)

    def describe(self) -> str:
        """A short human label, e.g. 'rank x0.5 · int4 g128 · 50% sparse' (engine.recipe.label)."""
        return label(self)


@functools.lru_cache(maxsize=4096)
def _for_layer(recipe: Recipe, name: str) -> Recipe:
    base = recipe.base()
    for match, items in recipe.per_layer:
        if re.search(match, name):
            return base.updated(**dict(items))
    return base
