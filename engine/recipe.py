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
import json
import math
import re
from dataclasses import dataclass

from .errors import UserError

GRANULARITIES = ("tensor", "channel", "group")
GROUPS = ("all", "attention", "mlp")
BITS = (2, 3, 4, 5, 6, 7, 8, 16)
LOWRANK_METHODS = ("svd", "whitened")
PRUNE_METHODS = ("magnitude", "wanda")
QUANT_METHODS = ("rtn", "gptq", "kmeans")
DISTILL_LR = 1e-4
CALIBRATED = {"whitened", "wanda", "gptq"}  # methods that need the calibration statistics


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
class Recipe:
    """What to do to every selected layer.

    rank / rank_ratio: truncated SVD at this rank (capped at the layer's full rank) or at
        this fraction of each layer's full rank; at full rank the layer stays dense, since
        the factorization is then exact and never smaller. Both None: no low rank.
    bits: 2..8 for round-to-nearest fake quantization, 16 for none.
    granularity: one scale per 'tensor', per output 'channel', or per 'group' of
        `group_size` consecutive input values.
    symmetric: False adds a b-bit zero-point per group.
    sparsity: fraction of stored values zeroed by magnitude, exactly round(S x n) per tensor.
    pattern: 'unstructured', or 'N:M' (keep N of every M consecutive input values);
        with N:M the sparsity is 1 - N/M.
    include_embeddings: also compress the input embeddings and the output head.
    group: 'all', or only the 'attention' or 'mlp' layers of the transformer blocks.
    layers: a regular expression; only layers whose name it matches (re.search) are
        compressed. None: all compressible layers. Both group and layers must select a layer.
    lowrank_method: 'svd' (plain truncation) or 'whitened' (truncation-aware SVD on whitened
        calibration inputs, SVD-LLM); same rank, same bytes.
    prune_method: 'magnitude' (smallest |W| in the tensor) or 'wanda' (smallest |W| x input
        column norm, per output row); with an N:M pattern, the score picks the N of each M.
    quant_method: 'rtn' (round to nearest), 'gptq' (rounding with error feedback through the
        inverse input Hessian; same grid and bytes as rtn) or 'kmeans' (a per-layer codebook of
        2^bits shared values; granularity and group size do not apply).
    act_order: GPTQ only: quantize columns by decreasing input energy (static groups).
    distill_steps: after compression, this many steps of knowledge distillation from the
        uncompressed model on the calibration text (engine.distill); 0: none. Same bytes.
    distill_lr: the learning rate of those steps (Adam).
    """

    rank: int | None = None
    rank_ratio: float | None = None
    bits: int = 16
    granularity: str = "group"
    group_size: int = 128
    symmetric: bool = True
    sparsity: float = 0.0
    pattern: str = "unstructured"
    include_embeddings: bool = False
    group: str = "all"
    layers: str | None = None
    lowrank_method: str = "svd"
    prune_method: str = "magnitude"
    quant_method: str = "rtn"
    act_order: bool = False
    distill_steps: int = 0
    distill_lr: float = DISTILL_LR

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank_ratio is not None:
            raise RecipeError("rank: give either rank or rank_ratio, not both")
        if self.rank is not None and (_not_int(self.rank) or self.rank < 1):
            raise RecipeError(f"rank: must be an integer >= 1, got {self.rank!r}")
        if self.rank_ratio is not None and (
            _not_number(self.rank_ratio) or not 0 < self.rank_ratio <= 1
        ):
            raise RecipeError(f"rank_ratio: must be in (0, 1], got {self.rank_ratio!r}")
        if _not_int(self.bits) or self.bits not in BITS:
            raise RecipeError(f"bits: must be 2 to 8, or 16 for no quantization, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise RecipeError(
                f"granularity: must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}"
            )
        if _not_int(self.group_size) or not 1 <= self.group_size <= 1 << 20:
            raise RecipeError(f"group_size: must be an integer >= 1, got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise RecipeError(f"symmetric: must be true or false, got {self.symmetric!r}")
        if not isinstance(self.include_embeddings, bool):
            raise RecipeError(
                f"include_embeddings: must be true or false, got {self.include_embeddings!r}"
            )
        if _not_number(self.sparsity) or not 0 <= self.sparsity < 1:
            raise RecipeError(f"sparsity: must be in [0, 1), got {self.sparsity!r}")
        nm = parse_pattern(self.pattern) if isinstance(self.pattern, str) else None
        if not isinstance(self.pattern, str):
            raise RecipeError(f"pattern: expected 'unstructured' or 'N:M', got {self.pattern!r}")
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.sparsity == 0:
                object.__setattr__(self, "sparsity", implied)
            elif not math.isclose(self.sparsity, implied, abs_tol=1e-9):
                raise RecipeError(
                    f"sparsity: pattern {self.pattern} means sparsity {implied:g}; "
                    f"got {self.sparsity!r} (leave sparsity out)"
                )
        for field, allowed in (("lowrank_method", LOWRANK_METHODS), ("prune_method", PRUNE_METHODS),
                               ("quant_method", QUANT_METHODS)):
            if getattr(self, field) not in allowed:
                raise RecipeError(f"{field}: must be one of {', '.join(allowed)}, got {getattr(self, field)!r}")
        if not isinstance(self.act_order, bool):
            raise RecipeError(f"act_order: must be true or false, got {self.act_order!r}")
        if self.act_order and self.quant_method != "gptq":
            raise RecipeError("act_order: only with quant_method gptq")
        if _not_int(self.distill_steps) or not 0 <= self.distill_steps <= 100_000:
            raise RecipeError(f"distill_steps: must be an integer from 0 to 100000, got {self.distill_steps!r}")
        if _not_number(self.distill_lr) or not 0 < self.distill_lr <= 1:
            raise RecipeError(f"distill_lr: must be in (0, 1], got {self.distill_lr!r}")
        if self.group not in GROUPS:
            raise RecipeError(f"group: must be one of {', '.join(GROUPS)}, got {self.group!r}")
        if self.layers is not None:
            if not isinstance(self.layers, str) or not self.layers:
                raise RecipeError(f"layers: must be a non-empty regular expression, got {self.layers!r}")
            try:
                re.compile(self.layers)
            except re.error as e:
                raise RecipeError(f"layers: not a valid regular expression ({e})") from None

    # -- derived values -------------------------------------------------------------------
    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def structure_key(self) -> tuple:
        """What a layer's shape (low rank and pruning mask) depends on: recipes equal on it
        differ only in quantization."""
        return (self.rank, self.rank_ratio, self.sparsity, self.pattern, self.lowrank_method, self.prune_method)

    @property
    def calibrated(self) -> bool:
        """Whether a method in use needs the calibration statistics."""
        used = {self.quant_method if self.bits < 16 else "rtn",
                self.prune_method if self.sparsity > 0 else "magnitude",
                self.lowrank_method if (self.rank or self.rank_ratio) else "svd"}
        return bool(used & CALIBRATED)

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
        """Whether a layer of this name and group ('attention' | 'mlp' | 'other') is compressed."""
        if self.group != "all" and group != self.group:
            return False
        return self.layers is None or re.search(self.layers, name) is not None

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

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
        """A short human label, e.g. 'r=0.5 · int4 g128 · 50% unstructured'."""
        parts = []
        low = " whitened" if self.lowrank_method == "whitened" else ""
        if self.rank is not None:
            parts.append(f"rank {self.rank}{low}")
        elif self.rank_ratio is not None and self.rank_ratio < 1:
            parts.append(f"rank x{self.rank_ratio:g}{low}")
        if self.bits < 16 and self.quant_method == "kmeans":
            parts.append(f"k-means {self.bits}-bit")
        elif self.bits < 16:
            g = {"tensor": "per-tensor", "channel": "per-channel"}.get(
                self.granularity, f"g{self.group_size}"
            )
            gptq = (" GPTQ" + (" act-order" if self.act_order else "")) if self.quant_method == "gptq" else ""
            parts.append(f"int{self.bits} {g}{'' if self.symmetric else ' asym'}{gptq}")
        if self.sparsity > 0:
            parts.append(
                (self.pattern if self.pattern != "unstructured" else f"{self.sparsity:.0%} sparse")
                + (" Wanda" if self.prune_method == "wanda" else "")
            )
        if self.group != "all":
            parts.append(f"{self.group} layers only")
        if self.layers is not None:
            parts.append(f"layers ~ /{self.layers}/")
        if self.include_embeddings:
            parts.append("with embeddings")
        if self.distill_steps:
            parts.append(f"distilled {self.distill_steps} steps" + (f" lr {self.distill_lr:g}" if self.distill_lr != DISTILL_LR else ""))
        return " · ".join(parts) or "uncompressed"


def _not_int(x: object) -> bool:
    return isinstance(x, bool) or not isinstance(x, int)


def _not_number(x: object) -> bool:
    return isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x)
