"""The values a recipe field may take, and the checks and parsing shared by its fields.

Every field of engine.recipe.Recipe is declared with a `Field`: its type, a one-line help,
its choices, its command-line option and URL parameter, and whether a per-layer rule may set
it. The command line, the app and the sweep read these declarations; nothing types the
field list out again.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from .errors import UserError

GRANULARITIES = ("tensor", "channel", "group")
GROUPS = ("all", "attention", "mlp", "experts", "router")
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


