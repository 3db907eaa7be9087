"""A gradual pruning schedule (Distiller's automated gradual pruner, Zhu & Gupta 2017): the pruned
share rises from zero to the recipe's target over N steps, with distillation between them.

    scheduled = run(explorer, Recipe(sparsity=0.5, schedule_steps=4, distill_steps=16))
    scheduled.workspace.applied.memory     # the last step: the recipe itself, distilled
    scheduled.steps                        # per step: its share, what it removed, its quality

Step t of N prunes to the share 1 - (1 - t/N)^3 of every target (`shares`): fast at first, when
there is much to remove, slowly at the end. Each step starts from the model the step before left
(its values distilled), so a later step's mask is chosen on trained weights and keeps the zeros
already made (they have the lowest scores):

- unstructured sparsity S: step t prunes to S x share_t;
- N:M: steps before the last prune unstructured to (1 - N/M) x share_t, the last one applies the
  N:M pattern, whose per-group choice then keeps the weights the training kept;
- heads, MLP channels, blocks: the counts the recipe removes from the original
  (engine.structure.removal), step t removing what brings the total to floor(count x share_t + 1/2),
  chosen by importance on the model as it then is (its own calibration);
- everything else in the recipe (low rank, quantization, a number format) is applied at the
  last step only, with the last pruning.

After each step, `distill_steps` steps of distillation from the original (engine.drivers.distill)
and a first estimate of the quality. Per-layer rules are not scheduled (a rule's regular
expression would match other blocks once blocks are removed).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

from engine.recipe.recipe import Recipe
from engine.structure import blocks, removal


def shares(steps: int) -> list[float]:
    """The share of the target reached after each of `steps` steps: 1 - (1 - t/steps)^3.

    >>> shares(4)
    [0.578125, 0.875, 0.984375, 1.0]
    """
    return [1 - (1 - t / steps) ** 3 for t in range(1, steps + 1)]


def _round(x: float) -> int:
    return math.floor(x + 0.5)


@dataclass(frozen=True)
class Targets:
    """What the recipe removes from the original, in counts: key/value groups and MLP channels per
    block (of `groups` and `channels`), and blocks (a count, or explicit indices)."""

    groups: int = 0
    channels: int = 0
    heads: int = 0
    mlp: int = 0
    blocks: int = 0
    indices: str | None = None

    @classmethod
    def of(cls, recipe: Recipe, model) -> "Targets":
        if not recipe.structured:
            return cls()
        found = blocks.find(model)
        plan = removal.counts(recipe, found)
        return cls(plan.groups[0], plan.channels[0], plan.remove_groups[0], plan.remove_channels[0],
                   0 if recipe.remove_blocks else plan.remove_blocks, recipe.remove_blocks)


def step_recipe(recipe: Recipe, targets: Targets, share: float, before: float, last: bool) -> Recipe:
    """The recipe of one step: pruning to `share` of the targets on the model the step at share
    `before` left (0: the original); on the `last` step, with the rest of the recipe."""
    d = Recipe().to_dict() if not last else {**recipe.to_dict(), "per_layer": []}
    d.update(group=recipe.group, layers=recipe.layers, include_embeddings=recipe.include_embeddings,
             prune_method=recipe.prune_method, structure_importance=recipe.structure_importance,
             schedule_steps=0, distill_steps=0, prune_blocks=0, remove_blocks=None)
    if recipe.nm is not None and not last:
        d.update(pattern="unstructured", sparsity=round(recipe.sparsity * share, 4))
    elif recipe.nm is None:
        d["sparsity"] = round(recipe.sparsity * share, 4)

    def fraction(count: int, total: int) -> float:
        """The fraction of what is left that removes this step's part of `count` (exactly, by
        engine.structure.removal.removed_count: floor(k / left x left + 1/2) = k)."""
        done, now = _round(count * before), _round(count * share)
        return (now - done) / (total - done) if now > done else 0.0

    d["prune_heads"] = fraction(targets.heads, targets.groups)
    d["prune_channels"] = fraction(targets.mlp, targets.channels)
    d["prune_blocks"] = _round(targets.blocks * share) - _round(targets.blocks * before)
    if targets.indices and before == 0:
        d["remove_blocks"] = targets.indices  # blocks named by the user: at the first step
    return Recipe.from_dict(d)


@dataclass
class Scheduled:
    """The result of a schedule: the workspace after the last step, and each step's report."""

    workspace: object
    steps: list[dict]
    seconds: float


def run(explorer, recipe: Recipe, progress=None, evaluate: bool = True) -> Scheduled:
    """Run `recipe`'s schedule from the original of `explorer`; `progress(step, steps, what)`
    before each step. Each step's report: its number, share, the step's recipe, the bytes, the
    parameters left, the distillation's last loss and (with `evaluate`) a first estimate of the
    quality against the original."""
    t0 = time.perf_counter()
    root = explorer.root
    targets = Targets.of(recipe, root.loaded.model)
    source, before, out, work = root, 0.0, [], None
    all_shares = shares(recipe.schedule_steps)
    for t, share in enumerate(all_shares, 1):
        last = t == len(all_shares)
        if progress:
            progress(t - 1, len(all_shares), f"step {t} of {len(all_shares)}: {share:.1%} of the target")
        step = step_recipe(recipe, targets, share, before, last)
        work = source.workspace()
        applied = work.apply(step)
        loss = None
        if recipe.distill_steps:
            applied = work.distill(recipe.distill_steps, recipe.distill_lr)
            loss = applied.distillation.loss[-1]
        out.append({"step": t, "share": share, "recipe": step.describe(),
                    "compressed_bytes": applied.memory.compressed_bytes, "params": work.explorer.total_params,
                    "distill_loss": loss, "metrics": work.evaluate(quick=True) if evaluate else None})
        if not last:
            source = work.explorer.from_values(work)
        before = share
    applied = work.applied
    work.applied = dataclasses.replace(applied, recipe=recipe)  # the recipe asked for, its schedule included
    return Scheduled(work, out, time.perf_counter() - t0)
