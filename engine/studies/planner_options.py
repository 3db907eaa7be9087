"""The planner's options per unit (engine.studies.planner): what each means as recipe fields, how they are
written ('3/g64', '3/g256+z', '4/g64/s0.5', 'q4_k'), and the ladders offered around a reference."""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import UserError
from engine.formats import FORMATS
from engine.recipe.fields import BITS
from engine.recipe.recipe import Recipe

GROUP_SIZES = (32, 64, 128, 256)  # the wider ladder's, as the app's group-size control


@dataclass(frozen=True)
class Option:
    """One choice for a unit: recipe fields its per-layer rule sets (none: as the reference)."""

    label: str
    fields: tuple = ()

    @property
    def rule(self) -> dict:
        return dict(self.fields)


REFERENCE = Option("reference")


def parse_option(text: str) -> Option:
    """'4' (bits, the reference's grid), '3/g64' (bits in groups of 64), '3/ch' (per output
    channel), any of these with '+z' (a zero-point per group: '3/g256+z'), with a rank ratio
    ('/r0.5': truncated SVD at half the full rank) or a sparsity ('/s0.5': half the values
    pruned) as well ('4/g64/s0.5', or 's0.5' alone at the reference's bits), a llama.cpp type
    ('q4_k'), or 'reference'. Validity with the reference is checked by the planner."""
    t = text.strip().lower()
    if t in ("reference", "ref"):
        return REFERENCE
    if t in FORMATS and t != "int":
        return Option(t, (("number_format", t),))
    zero = t.endswith("+z")
    parts, fields, seen = (t[:-2] if zero else t).split("/"), [], set()
    for k, part in enumerate(parts):
        m = re.fullmatch(r"(\d+)|g(\d+)|(ch)|([rs])(0?\.\d+|1(?:\.0*)?|0)", part)
        kind = m and ("bits" if m.group(1) else "grid" if m.group(2) or m.group(3) else m.group(4))
        if not m or kind in seen or (kind == "bits" and (k or int(part) not in BITS or int(part) == 16)) \
                or (kind == "grid" and "bits" not in seen):
            raise UserError(f"--ladder: {text!r} is not an option; give bits (2-8), bits/gN (e.g. 3/g64), bits/ch, "
                            f"each with /rX for a rank ratio, /sX for a sparsity and +z for zero-points "
                            f"(3/g256+z, 4/r0.5, 4/g64/s0.5), or a number format "
                            f"({', '.join(f for f in FORMATS if f != 'int')})")
        seen.add(kind)
        if kind == "bits":
            fields.append(("bits", int(part)))
        elif m.group(3):
            fields.append(("granularity", "channel"))
        elif m.group(2):
            fields += [("granularity", "group"), ("group_size", int(m.group(2)))]
        else:
            fields.append(("rank_ratio" if kind == "r" else "sparsity", float(m.group(5))))
    if zero:
        fields.append(("symmetric", False))
    return Option(t, tuple(fields))


def parse_ladder(text: str) -> list[Option]:
    options = [parse_option(t) for t in text.split(",") if t.strip()]
    if not options:
        raise UserError("--ladder: give at least one option")
    return list(dict.fromkeys(options))


def default_ladder(reference: Recipe) -> list[Option]:
    """The options around the reference: for the explorer's integer grid at b bits, b - 1 and b + 1
    bits per channel, b bits per channel and in groups of 64 and 32, b + 1 bits in groups of 128
    (about b - 1, b, b + 1/4, b + 1/2 and b + 1 bits per value), and b bits with zero-points in
    groups of 128 and of 256 (a little more, and a little less, than b bits in groups of 128
    without); for llama.cpp's types, the k-quants and q8_0."""
    if reference.number_format != "int":
        return [parse_option(t) for t in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0")]
    b = reference.bits if reference.bits < 16 else 4
    labels = [f"{b - 1}/ch", f"{b}/ch", f"{b}/g64", f"{b}/g32", f"{b + 1}/ch", f"{b + 1}/g128", f"{b}/g128+z",
              f"{b}/g256+z"]
    return [parse_option(t) for t in labels if int(t.split("/")[0]) in BITS and int(t.split("/")[0]) < 16]


def wider_ladder(reference: Recipe) -> list[Option]:
    """Every option the app offers around the reference: the default ladder's, and b - 1, b and
    b + 1 bits each per channel and in each group size of GROUP_SIZES, with and without zero-points."""
    if reference.number_format != "int":
        return default_ladder(reference) + [parse_option(t) for t in ("q4_0", "q5_0")]
    b = reference.bits if reference.bits < 16 else 4
    grids = ["ch"] + [f"g{g}" for g in sorted(GROUP_SIZES, reverse=True)]
    return [parse_option(f"{bits}/{g}{z}") for bits in (b - 1, b, b + 1) if bits in BITS and bits < 16
            for z in ("", "+z") for g in grids]
