"""Every number format a recipe can name, in one table: what it is, its grid, what it allows.

Three families:

    int    the explorer's own integer grid (engine.formats.grid): the recipe sets its bits,
           granularity, group size and symmetry; the only family that low rank and pruning
           combine with, since its groups hold any matrix and its zeros stay zero
    ggml   llama.cpp's types (engine.formats.ggml), which fix their bits and blocks themselves
    float  the float formats of bitsandbytes, compressed-tensors and NVIDIA (engine.formats.floats)

The recipe's checks, the pipeline, the command line's choices, the app's labels and the
documentation's list all read `FORMATS`. A new llama.cpp type or float format joins its
family's own table (ggml.types.TYPES, floats.TYPES) and appears here.

>>> FORMATS["q4_k"].fixed()
{'bits': 4, 'granularity': 'group', 'group_size': 256, 'symmetric': False}
>>> [f.name for f in FORMATS.values() if f.legacy]
['q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0']
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.formats import floats
from engine.formats.ggml.types import LEGACY, TYPES

OWN_GROUP_SIZE = 128  # the recipe's default group size, which a format without blocks leaves as it is
GRID_FIELDS = ("bits", "granularity", "group_size", "symmetric")  # the recipe fields a format other than 'int' fixes


@dataclass(frozen=True)
class Format:
    """One number format a recipe's `number_format` may name."""

    name: str
    family: str  # 'int' | 'ggml' | 'float'
    bits: int | None  # the width of a code (None: the recipe's bits)
    block: int | None  # values per block (None: the recipe's groups ('int'), or a scale per row (fp8))
    symmetric: bool | None  # zero stored exactly with no minimum (None: the recipe's choice)
    bits_per_value: float | None  # codes and block scales per value (None: the recipe's grid decides)
    legacy: bool = False  # llama.cpp's legacy 32-value types, whose blocks GPTQ can fill
    importance: bool = False  # its quantizer takes an importance matrix (llama.cpp's imatrix)
    double_quant: bool = False  # its block scales may be quantized again (QLoRA)
    help: str = ""

    @property
    def reshapes(self) -> bool:
        """Whether low rank and pruning combine with it (only the explorer's own grid)."""
        return self.family == "int"

    def fixed(self) -> dict:
        """The recipe fields this format sets itself ({} for 'int')."""
        if self.family == "int":
            return {}
        return dict(zip(GRID_FIELDS, (self.bits, "group" if self.block else "channel", self.block or OWN_GROUP_SIZE,
                                      self.symmetric)))

    @property
    def label(self) -> str:
        """How the app names it."""
        if self.family == "int":
            return "Explorer's integer grid"
        where = "llama.cpp, " if self.family == "ggml" else ""
        return f"{self.name.upper()} ({where}{self.bits_per_value:g} bits/value)"


def _table() -> dict[str, Format]:
    own = Format("int", "int", None, None, None, None,
                 help="the explorer's own integer grid: bits, scales per tensor, channel or group, symmetric or not")
    ggml = [Format(t.name, "ggml", t.bits, t.block, t.symmetric, t.bits_per_value, legacy=t.name in LEGACY,
                   importance=t.name != "mxfp4", help=t.help) for t in TYPES.values()]
    flt = [Format(t.name, "float", t.bits, t.block, True, t.bits_per_value, double_quant=t.name in floats.DOUBLE_QUANT,
                  help=t.help) for t in floats.TYPES.values()]
    return {f.name: f for f in (own, *ggml, *flt)}


FORMATS: dict[str, Format] = _table()
