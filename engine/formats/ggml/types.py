"""llama.cpp's types (GGML types) as data: their blocks and bytes, and the type a row falls back to."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GgmlType:
    """One GGML type: `block` values stored in `size` bytes."""

    name: str
    block: int
    size: int
    bits: int  # the width of a value's code (the recipe's bits)
    symmetric: bool  # no minimum: zero is stored exactly
    help: str

    @property
    def bits_per_value(self) -> float:
        return 8 * self.size / self.block

    def row_bytes(self, cols: int) -> int:
        return cols // self.block * self.size


TYPES = {t.name: t for t in (
    GgmlType("q4_0", 32, 18, 4, True, "4-bit codes, one fp16 scale per 32 values (signed extreme maps to -8)"),
    GgmlType("q4_1", 32, 20, 4, False, "4-bit codes, an fp16 scale and fp16 minimum per 32 values"),
    GgmlType("q5_0", 32, 22, 5, True, "5-bit codes, one fp16 scale per 32 values"),
    GgmlType("q5_1", 32, 24, 5, False, "5-bit codes, an fp16 scale and fp16 minimum per 32 values"),
    GgmlType("q8_0", 32, 34, 8, True, "8-bit codes, one fp16 scale per 32 values"),
    GgmlType("q2_k", 256, 84, 2, False, "2-bit codes; 16 sub-blocks with 4-bit scales and minimums"),
    GgmlType("q3_k", 256, 110, 3, True, "3-bit codes; 16 sub-blocks with 6-bit scales"),
    GgmlType("q4_k", 256, 144, 4, False, "4-bit codes; 8 sub-blocks with 6-bit scales and minimums"),
    GgmlType("q5_k", 256, 176, 5, False, "5-bit codes; 8 sub-blocks with 6-bit scales and minimums"),
    GgmlType("q6_k", 256, 210, 6, True, "6-bit codes; 16 sub-blocks with 8-bit scales"),
    GgmlType("mxfp4", 32, 17, 4, True, "4-bit E2M1 floats (0 to 6), one power-of-two E8M0 scale per 32 values "
                                       "(OCP microscaling, gpt-oss's weights)"),
)}
LEGACY = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0")
K_QUANTS = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k")
# llama.cpp's quantize, when a row does not divide into a type's blocks (tensor_type_fallback)
_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def fit(fmt: str, cols: int) -> str | None:
    """The type llama.cpp stores a row of `cols` values in when asked for `fmt`: `fmt` itself
    when its blocks divide the row, else its fallback (a 32-value type), else None (fp16).

    >>> fit("q4_k", 576), fit("q4_k", 1536), fit("q8_0", 100)
    ('q5_0', 'q4_k', None)
    """
    for name in (fmt, _FALLBACK.get(fmt)):
        if name is not None and cols % TYPES[name].block == 0:
            return name
    return None


def layout_note(recipe) -> str | None:
    """One sentence on how a recipe's grid relates to llama.cpp's types, where it does: the
    type it is, or the type whose bytes the explorer's own grid has (and where their values differ)."""
    fmt = recipe.number_format
    if recipe.bits >= 16:
        return None
    if fmt != "int" and fmt not in TYPES:  # a float format (engine.formats.floats): no llama.cpp type
        return None
    if fmt != "int":
        t = TYPES[fmt]
        fallback = _FALLBACK.get(fmt)
        return (f"llama.cpp's {fmt.upper()}: {t.bits_per_value:g} bits per value; {t.help}."
                + (f" Rows its {t.block}-value blocks do not divide take {fallback}, as llama.cpp's quantize does."
                   if fallback else " Rows of other than a multiple of 32 values stay fp16."))
    same = {(8, 32): "q8_0", (4, 32): "q4_0", (5, 32): "q5_0"}.get((recipe.bits, recipe.group_size))
    if not (same and recipe.symmetric and recipe.granularity == "group" and recipe.quant_method != "kmeans"):
        return None
    if same == "q8_0":
        return ("This is llama.cpp's Q8_0 layout (the same bytes) and nearly its values: scale max|w| / 127 as "
                "Q8_0 takes it, but codes taken with the scale as stored in fp16 (99.3% of the values equal "
                "Q8_0's on both offline models, with the same error).")
    top = 2 ** (recipe.bits - 1)
    return (f"This is llama.cpp's {same.upper()} layout (the same bytes), not its values: {same.upper()} maps each "
            f"block's signed extreme to the code -{top} (scale x_max / -{top}); this grid's scale max|w| / "
            f"{top - 1} never uses that code. Number format {same} gives llama.cpp's values.")
