"""What the budget planner (engine.studies.planner) returns: a Plan, frozen, with the plan and the
reference it competes with, each measured with the full protocol, and how the plan was found.

    p = plan(work, Recipe(bits=3))
    p.recipe, p.planned.compressed_bytes, p.planned.metrics[p.metric], p.uniform.metrics[p.metric]
    json.dumps(p.to_dict())                             # its JSON form, as `python -m engine plan --json` prints

Every type here has a `to_dict()` giving plain data (lists, dicts, a recipe's own dict).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.recipe.recipe import Recipe


@dataclass(frozen=True)
class Outcome:
    """A recipe measured with the full protocol: its bytes stored, their `ratio` to the fp16
    bytes, and `metrics` (metric -> value)."""

    compressed_bytes: int
    ratio: float
    metrics: dict

    def to_dict(self) -> dict:
        return {"compressed_bytes": self.compressed_bytes, "ratio": self.ratio, "metrics": self.metrics}


@dataclass(frozen=True)
class Grid:
    """The first round's sensitivity in context: `loss[i][j]` and `bytes[i][j]` are what unit
    `units[i]` at option `options[j]` adds to the reference's (0 at the reference's own option),
    in `metric`'s loss (planner.score) on the planning text `text`; units by `by`."""

    metric: str
    text: str
    by: str
    units: tuple[str, ...]
    options: tuple[str, ...]  # labels, "reference" first
    reference: str  # the reference, described
    loss: tuple[tuple[float, ...], ...]
    bytes: tuple[tuple[int, ...], ...]

    def to_dict(self) -> dict:
        return {"metric": self.metric, "text": self.text, "by": self.by, "units": list(self.units),
                "options": list(self.options), "reference": self.reference,
                "loss": [list(row) for row in self.loss], "bytes": [list(row) for row in self.bytes]}


@dataclass(frozen=True)
class UnitChoice:
    """One unit of the plan: its `layers`, the label of its `choice`, and the first round's loss
    of each option (label -> loss, as in the Grid)."""

    unit: str
    layers: tuple[str, ...]
    choice: str
    loss_by_option: dict

    def to_dict(self) -> dict:
        return {"unit": self.unit, "layers": list(self.layers), "choice": self.choice,
                "loss_by_option": self.loss_by_option}


@dataclass(frozen=True)
class Candidate:
    """One candidate measured: in `round` (0: an option given to every unit), `changes` units
    from that round's center, the `predicted` loss (None for round 0), the `measured` loss and
    `bytes` on the planning text, and its `choice` (unit -> option label)."""

    round: int
    changes: int
    predicted: float | None
    measured: float
    bytes: int
    choice: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Plan:
    """What `plan` returns: the plan (`recipe`) and the reference (`uniform`), both with the
    full protocol, and how the plan was found. `to_dict()` is its JSON form."""

    metric: str  # the primary metric
    baseline: dict  # the uncompressed model's metrics
    target_ratio: float | None  # as asked; None: within the reference's bytes
    budget_bytes: float  # the bytes the plan stays within (the reference's, an int, without a target)
    by: str  # the unit: 'layer', 'block' or 'type'
    reference: Recipe  # the setting the plan competes with (distill_steps 0)
    ladder: tuple[str, ...]  # the options' labels
    recipe: Recipe  # the plan: the reference with a per-layer rule per unit not at the reference
    is_reference: bool  # no mix measured better: the plan is the reference
    units: tuple[UnitChoice, ...]  # in model order
    grid: Grid
    rounds: tuple[Candidate, ...]  # every candidate measured, in order
    rounds_run: int
    measured_choices: int  # distinct settings measured on the planning text
    planned: Outcome  # the plan, full protocol ('plan' in the JSON form)
    uniform: Outcome  # the reference, full protocol ('uniform', with the reference described as its 'recipe')

    def to_dict(self) -> dict:
        """The plan as plain data, for JSON: {'metric', 'baseline', ..., 'plan', 'uniform'}."""
        return {"metric": self.metric, "baseline": self.baseline, "target_ratio": self.target_ratio,
                "budget_bytes": self.budget_bytes, "by": self.by, "reference": self.reference.to_dict(),
                "ladder": list(self.ladder), "recipe": self.recipe.to_dict(), "is_reference": self.is_reference,
                "units": [u.to_dict() for u in self.units], "grid": self.grid.to_dict(),
                "rounds": [c.to_dict() for c in self.rounds], "rounds_run": self.rounds_run,
                "measured_choices": self.measured_choices, "plan": self.planned.to_dict(),
                "uniform": {"recipe": self.reference.describe(), **self.uniform.to_dict()}}
