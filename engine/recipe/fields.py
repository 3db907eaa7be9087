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
from typing import Callable

from engine.errors import UserError
from engine.formats import FORMATS
from engine.methods import METHODS

GRANULARITIES = ("tensor", "channel", "group")
GROUPS = ("all", "attention", "mlp", "experts", "router")
BITS = (2, 3, 4, 5, 6, 7, 8, 16)
STRUCTURE_IMPORTANCE = ("calibration", "magnitude")
DISTILL_LR = 1e-4
SHARE_BLOCKS = 2  # default blocks per group that share one basis (engine.methods.shared)


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


def parse_indices(text: str) -> tuple[int, ...]:
    """'5, 3,4' -> (3, 4, 5): block indices, sorted, each once. Raises RecipeError on anything else.

    >>> parse_indices("5, 3,4")
    (3, 4, 5)
    """
    if not re.fullmatch(r"\s*\d+\s*(,\s*\d+\s*)*", text):
        raise RecipeError(f"remove_blocks: expected comma-separated block indices (e.g. 3,4,5), got {text!r}")
    return tuple(sorted({int(t) for t in text.split(",")}))


@dataclass(frozen=True)
class Field:
    """What a recipe field is, declared once: the command line, the app's controls and URL, the
    sweep's CSV columns, the JSON and the recipe's own checks all read it from here.

    type: the value's Python type (int, float, str, bool); optional: None is allowed.
    help: one line for the command line's --help and the app's help icon.
    choices: the allowed values, where they are a fixed list; or a function that gives them
        (a table's names, read when asked, so a method registered later is among them).
    bounds: the allowed range of a number, as written in mathematics: '[0, 1)', '(0, 1]',
        '[1, 64]'; an endpoint 'inf' is open.
    flag: the command-line option (default --field-name); for a bool whose default is True, the
        option that sets it False (--asymmetric).
    url: the app's URL parameter (None: not in the URL).
    per_layer: a per-layer rule may set it.
    """

    type: type
    help: str
    optional: bool = False
    choices: tuple | Callable[[], tuple] | None = None
    bounds: str | None = None
    flag: str | None = None
    url: str | None = None
    per_layer: bool = True

    @property
    def allowed(self) -> tuple | None:
        """The allowed values now (None: any value of the type, within bounds)."""
        return self.choices() if callable(self.choices) else self.choices

    def check(self, name: str, value: object) -> None:
        """A RecipeError naming the field unless `value` has the declared type, is among the
        choices and within the bounds.

        >>> Field(float, "", bounds="[0, 1)").check("sparsity", 1.0)
        Traceback (most recent call last):
        ...
        engine.recipe.fields.RecipeError: sparsity: must be a number in [0, 1), got 1.0
        """
        if value is None and self.optional:
            return
        what = _TYPE_WORDS.get(self.type)
        wrong = {bool: lambda x: not isinstance(x, bool), int: not_int, float: not_number,
                 str: lambda x: not isinstance(x, str)}.get(self.type, lambda x: False)(value)
        allowed = self.allowed
        if allowed is not None and (wrong or value not in allowed):
            raise RecipeError(f"{name}: must be one of {', '.join(map(str, allowed))}, got {value!r}")
        if wrong or (self.bounds and not _within(value, self.bounds)):
            raise RecipeError(f"{name}: must be {what}" + (f" in {self.bounds}" if self.bounds else "")
                              + f", got {value!r}")


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a list"}


def _within(x: float, bounds: str) -> bool:
    """Whether x lies in an interval written '[lo, hi)', '(lo, hi]', ... ('inf' for no end)."""
    lo, hi = (float(v) for v in bounds[1:-1].split(","))
    return (lo <= x if bounds[0] == "[" else lo < x) and (x <= hi if bounds[-1] == "]" else x < hi)


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
    matrix stored once, so every step that would treat it per layer (a method that uses one
    layer's inputs, distillation that trains each layer apart) would make it differ between layers."""
    if r.lowrank_method != "shared":
        if r.share_blocks != SHARE_BLOCKS:
            raise RecipeError("share_blocks: only with lowrank_method shared")
        return
    if r.rank is None and r.rank_ratio is None:
        return
    for field, used in (("quant_method", r.bits < 16), ("prune_method", r.sparsity > 0)):
        method = METHODS[getattr(r, field)]
        if used and not method.shared_basis:
            fine = ", ".join(m.name for m in METHODS.values()
                             if m.kind == method.kind and m.shared_basis and m.runs_on("int"))
            raise RecipeError(f"{field}: {method.name} uses each layer's own inputs; a shared basis is one matrix "
                              f"stored once (use {fine} with lowrank_method shared)")
    if r.distill_steps:
        raise RecipeError("distill_steps: distillation trains each layer apart and would split a shared basis")


_QUANT_DEFAULTS = {"bits": 16, "granularity": "group", "group_size": 128, "symmetric": True}


def format_fields(r) -> dict:
    """The quantization fields recipe `r`'s number format fixes (bits, blocks, symmetric; none for
    'int'), from engine.formats. A field left at its default takes the format's value; one
    set otherwise, or a method the format cannot hold (engine.methods), is a RecipeError
    naming it."""
    fmt = FORMATS[r.number_format]
    if r.double_quant and not fmt.double_quant:
        dq = " or ".join(f.name for f in FORMATS.values() if f.double_quant)
        raise RecipeError(f"double_quant: only with number format {dq} (it quantizes their block scales), "
                          f"got {fmt.name}")
    method = METHODS[r.quant_method]
    if not method.runs_on(fmt.name):
        where = ("only on the explorer's own grid: number_format int" if method.formats == ("int",)
                 else f"on {', '.join(method.formats)}")
        raise RecipeError(f"quant_method: {method.name} does not run on {fmt.name} (it runs {where})")
    fixed = fmt.fixed()
    for field, value in fixed.items():
        if getattr(r, field) not in (value, _QUANT_DEFAULTS[field]):
            raise RecipeError(f"{field}: number format {fmt.name} fixes it at {value!r}, got {getattr(r, field)!r} "
                              f"(leave {field} out)")
    if fmt.reshapes:
        return fixed
    if r.act_order:
        raise RecipeError(f"act_order: not with number format {fmt.name} (its blocks take their scales as GPTQ "
                          "reaches them)")
    if r.rank is not None or (r.rank_ratio is not None and r.rank_ratio < 1) or r.sparsity > 0:
        raise RecipeError(f"number_format: {fmt.name} stores every value of a full matrix"
                          + (", as llama.cpp does" if fmt.family == "ggml" else "")
                          + ": no low rank or pruning with it (use number_format int)")
    if r.distill_steps:
        raise RecipeError(f"distill_steps: distillation keeps values on the explorer's own grids, not on {fmt.name}")
    return fixed


def format_update(current: dict, fields: dict) -> dict:
    """What `Recipe.updated(**fields)` changes besides `fields` when a number format is given or
    left: a llama.cpp format given alone takes its own bits and blocks, and a method it cannot
    hold goes back to round to nearest; a bit width or grid given alone means the 'int' format."""
    grid = {f for f in _QUANT_DEFAULTS if f in fields}
    out = {}
    fmt = fields.get("number_format", current["number_format"] if not grid else "int")
    if "number_format" not in fields and grid:
        out["number_format"] = "int"
    if "number_format" in fields and fmt != "int":
        out.update({f: v for f, v in _QUANT_DEFAULTS.items() if f not in fields})
        if "act_order" not in fields:
            out["act_order"] = False
    if fmt in FORMATS and not FORMATS[fmt].double_quant and "double_quant" not in fields:
        out["double_quant"] = False
    method = METHODS.get(fields.get("quant_method", current["quant_method"]))
    if "quant_method" not in fields and method is not None and not method.runs_on(fmt):
        out["quant_method"] = "rtn"
    return out
