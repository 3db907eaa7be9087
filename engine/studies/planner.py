"""The budget planner: a setting per unit of layers that beats the uniform setting of the same bytes.

    p = plan(work, Recipe(bits=3))                      # at the bytes of uniform 3 bits, group 128
    p = plan(work, Recipe(bits=4), target_ratio=0.28)   # or at a target size (fraction of fp16)
    p.recipe                                            # the plan: a recipe with per-layer rules
    p.planned, p.uniform                                # each measured with the full protocol

The result is a Plan (engine.studies.plan_result; `to_dict()` is its JSON form), found by a
Planner, which holds what the steps below share.

The reference is the setting the plan competes with (a uniform recipe, or a mix such as
llama.cpp's Q4_K_M); units are engine.studies.sensitivity's (a layer, a block, or a kind of layer). Each unit
may take one of a ladder of options: a bit width with its own group size (3 bits in groups of
64 sits between 3 and 4 bits in groups of 128) or per-channel scales, with or without a
zero-point per group ("+z": 3 bits with zero-points in groups of 256 take fewer bytes than
without in groups of 128), or a llama.cpp type.

In context: every option of every unit is measured (the first estimate, on the planning text:
text the evaluation never reads, of its kind where there is one, see planning_text) with the rest of the model
at the current setting, not at full precision, so that a unit's loss is the loss it adds to a
model already compressed as it will be; losses measured alone do not add up at 2-3 bits (on
smollm2, k_proj alone at 2 bits costs little, but with everything else at 3 bits it breaks the
model). The bytes of each option are measured the same way (exact). A multiple-choice knapsack
then picks the option per unit with the least total loss within the budget; since large moves add
up less faithfully than small ones, its best choices changing at most 1, 2, 3, 4, 6, 8, ... units
are measured too, and the best measured kept. Each further round measures the options again around the best plan so far (the
losses of a move from there) and solves again; the best measured plan is kept, so a round can
only help. The reference itself is always a candidate, and so is each option of the ladder
given to every unit where its bytes fit (3 bits with zero-points in groups of 256 everywhere,
say): the next round measures around the best of all of these, so a plan is never worse on the
planning text than a uniform setting of the ladder within its bytes. Where no mix measures
better than the reference, the plan is the reference, and the result says so. The plan and the reference are then measured with
the full protocol.
"""
from __future__ import annotations

import dataclasses

from engine.errors import UserError
from engine.recipe.fields import RecipeError
from engine.recipe.recipe import Recipe
from engine.studies.knapsack import candidates, least_loss
from engine.studies.plan_measure import (
    NEWS_KINDS,
    PLAN_PARAGRAPHS,
    _Measure,
    full_task,
    measure_task,
    planning_text,
    score,
    with_choice,
)
from engine.studies.plan_result import Candidate, Grid, Outcome, Plan, UnitChoice
from engine.studies.planner_options import REFERENCE, Option, default_ladder, parse_ladder, parse_option, wider_ladder
from engine.studies.sensitivity import _groups, unit_regex

# the knapsack (engine.studies.knapsack), the options (engine.studies.planner_options), the measuring
# (engine.studies.plan_measure) and the result's types (engine.studies.plan_result) live apart; the
# planner's callers find them here too
__all__ = ["plan", "Planner", "least_loss", "candidates", "with_choice", "score", "planning_text",
           "PLAN_PARAGRAPHS", "NEWS_KINDS", "measure_task", "full_task", "Plan", "Outcome", "Grid", "UnitChoice", "Candidate",
           "REFERENCE", "Option", "parse_option", "parse_ladder", "default_ladder", "wider_ladder"]


def plan(work, reference: Recipe, target_ratio: float | None = None, by: str = "type", ladder=None,
         rounds: int = 2, progress=None, runner=None, measured: dict | None = None, on_result=None) -> Plan:
    """The option per unit (of `ladder`, default `default_ladder`) with the least measured loss
    within the bytes of `reference` applied (or `target_ratio` of the fp16 bytes), and, with the
    full protocol, the plan beside the reference. `progress(done, total, what)` is called after
    each step. The measurements run on `runner` (default: this process, on `work`), those of a
    step at once; `measured` (measurements already made, by key) and `on_result(key, [loss, bytes],
    worker)` (each new one as it arrives) are engine.studies.runner.gather's. Raises UserError
    for a bad argument or a target out of reach."""
    if target_ratio is not None and not 0 < target_ratio < 1:
        raise UserError(f"--target-ratio: must be in (0, 1), got {target_ratio!r}")
    if not isinstance(rounds, int) or not 1 <= rounds <= 10:
        raise UserError(f"--rounds: must be an integer from 1 to 10, got {rounds!r}")
    reference = dataclasses.replace(reference, distill_steps=0)
    ladder = list(ladder) if ladder else default_ladder(reference)
    for o in ladder:  # each option must make a valid recipe with the reference (e.g. no q4_k with low rank)
        try:
            with_choice(reference, {"x": "^x$"}, {"x": o})
        except RecipeError as e:
            raise UserError(f"--ladder: option {o.label} does not go with {reference.describe()}: "
                            f"{str(e).split(': ', 1)[-1]}") from None
    return Planner(work, reference, target_ratio, by, ladder, progress, runner, measured, on_result).run(rounds)


class Planner:
    """One plan being found: the units and their rules, the measurements (each choice once), the
    center of the current round, the best candidate within the budget and the history so far.

        Planner(work, reference, None, "type", ladder).run(rounds=2)   # a Plan; plan() checks arguments first
    """

    def __init__(self, work, reference: Recipe, target_ratio: float | None, by: str, ladder: list,
                 progress=None, runner=None, measured=None, on_result=None):
        ex = work.explorer
        self.work, self.reference, self.target_ratio, self.by, self.ladder = work, reference, target_ratio, by, ladder
        self.progress, self.done, self.total = progress, 0, 0
        self.evaluator = ex.evaluator()
        self.groups = _groups(ex, reference, by)
        everything = [i.name for i in ex.selected(reference)]
        self.regexes = {u: unit_regex(u, names, everything) for u, names in self.groups.items()}
        self.measure = _Measure(work, reference, self.regexes, runner, measured, on_result, self._tick)
        self.original = 2 * ex.total_params  # fp16 bytes
        self.units = list(self.groups)
        self.options = {u: [REFERENCE] + [o for o in ladder if o != REFERENCE] for u in self.units}
        self.infos = {i.name: i for i in ex.layers if i.tied_to is None}
        self.ref_bytes, self.budget = 0, 0.0  # the reference's bytes measured, and the budget: set by run()
        self.center = {u: REFERENCE for u in self.units}  # the choice the current round moves from
        self.best: tuple | None = None  # (loss, bytes, choice) of the best candidate within the budget
        self.history: list[Candidate] = []
        self.grid: Grid | None = None

    def run(self, rounds: int) -> Plan:
        """Measure the reference, every option everywhere, then up to `rounds` rounds; the Plan."""
        if self.target_ratio is not None:  # refused before anything is measured, from the bytes of the shapes
            self._check_reachable()
        self.total = rounds * len(self.units) * len(self.ladder) + len(self.ladder) + 1
        ref_loss, self.ref_bytes = self.measure({})
        self.budget = self.ref_bytes if self.target_ratio is None else self.target_ratio * self.original
        self.best = (ref_loss, self.ref_bytes, dict(self.center)) if self.ref_bytes <= self.budget else None
        # each option for every unit, where its bytes fit, is a candidate too
        everywhere = [{u: o for u in self.units} for o in self.ladder
                      if self.ref_bytes + sum(self._added(u, o) for u in self.units) <= self.budget]
        self.measure.prefetch(everywhere)
        for choice in everywhere:
            self._consider(choice, 0, None)
        rounds_run = 0
        for r in range(rounds):
            rounds_run = r + 1
            if not self._round(r):
                break
        if self.best is None:
            raise UserError(f"the target {self.target_ratio} cannot be reached with the options by {self.by}")
        return self._result(rounds_run)

    def _check_reachable(self) -> None:
        """Raise UserError where even the smallest option of every unit exceeds the target."""
        smallest = self.work.apply(self.reference).memory.compressed_bytes + sum(
            min(self._added(u, o) for o in self.options[u]) for u in self.units)
        if smallest > self.target_ratio * self.original:
            raise UserError(f"the target {self.target_ratio} cannot be reached with the options "
                            f"{self._labels()} by {self.by} (smallest: {smallest / self.original:.3f} of fp16)")

    def _round(self, r: int) -> bool:
        """Round r (from 0): measure every move from the center, measure the knapsack's candidates,
        move the center to the best so far. False: no further round would help."""
        c_loss, c_bytes = self.measure(self.center)
        loss, cost = self._moves(r, c_loss, c_bytes)
        if self.grid is None:
            self.grid = self._grid(loss, cost)
        found = candidates(self.units, self.options, loss, cost, self.budget - c_bytes, self.center)
        if not found:
            if r == 0 and self.best is None:
                raise UserError(f"the target {self.target_ratio} cannot be reached with the options "
                                f"{self._labels()} by {self.by}")
            return False
        self.measure.prefetch(found)
        for choice in found:
            self._consider(choice, r + 1, c_loss + sum(loss[u, choice[u]] for u in self.units))
        if self.best is None or self.best[2] == self.center:
            return False  # no move measured better: another round would measure the same
        self.center = self.best[2]  # the next round around the best so far (a round's own, or an option everywhere)
        return True

    def _moves(self, r: int, c_loss: float, c_bytes: int) -> tuple[dict, dict]:
        """The loss and bytes each (unit, option) adds to the center's (`c_loss`, `c_bytes`),
        measured: 0 where the option leaves the unit's layers as they are."""
        now = with_choice(self.reference, self.regexes, self.center)  # every layer's recipe at the center
        moves = {(u, o): {**self.center, u: o} for u in self.units for o in self.options[u]}
        moves = {uo: moved for uo, moved in moves.items() if uo[1] != self.center[uo[0]]
                 and not _same(now, with_choice(self.reference, self.regexes, moved), self.groups[uo[0]])}
        self.measure.prefetch(list(moves.values()))  # the round's moves at once
        loss, cost = {}, {}
        for u in self.units:
            for o in self.options[u]:
                if (u, o) not in moves:
                    loss[u, o], cost[u, o] = 0.0, 0
                    continue
                l, b = self.measure(moves[u, o])
                loss[u, o], cost[u, o] = l - c_loss, b - c_bytes
        return loss, cost

    def _consider(self, choice: dict, round_: int, predicted: float | None) -> None:
        """Measure a candidate, write it in the history, and keep it if it is the best within the budget."""
        got, got_bytes = self.measure(choice)
        self.history.append(Candidate(round_, sum(choice[u] != self.center[u] for u in self.units), predicted,
                                      got, got_bytes, {u: o.label for u, o in choice.items()}))
        if got_bytes <= self.budget and (self.best is None or got < self.best[0]):
            self.best = (got, got_bytes, choice)

    def _result(self, rounds_run: int) -> Plan:
        """The best candidate applied and measured with the full protocol, beside the reference."""
        from engine.studies.runner import gather

        _, plan_bytes, choice = self.best
        recipe = with_choice(self.reference, self.regexes, choice)
        full = gather(self.measure.runner, full_task, {"plan": recipe, "reference": self.reference})
        assert full["plan"][0] == plan_bytes
        plan_metrics = full["plan"][1]
        uniform = Outcome(self.ref_bytes, self.ref_bytes / self.original, full["reference"][1])
        grid = self.grid
        units = tuple(UnitChoice(u, tuple(self.groups[u]), choice[u].label, dict(zip(grid.options, grid.loss[i])))
                      for i, u in enumerate(self.units))
        return Plan(metric=self.evaluator.primary, baseline=self.evaluator.baseline(),
                    target_ratio=self.target_ratio, budget_bytes=self.budget, by=self.by, reference=self.reference,
                    ladder=tuple(o.label for o in self.ladder), recipe=recipe,
                    is_reference=all(o == REFERENCE for o in choice.values()), units=units, grid=grid,
                    rounds=tuple(self.history), rounds_run=rounds_run, measured_choices=len(self.measure.seen),
                    planned=Outcome(plan_bytes, plan_bytes / self.original, plan_metrics), uniform=uniform)

    def _grid(self, loss: dict, cost: dict) -> Grid:
        """The first round's moves as a Grid."""
        opts = self.options
        return Grid(self.measure.metric, self.measure.name, self.by, tuple(self.units),
                    tuple(o.label for o in opts[self.units[0]]), self.reference.describe(),
                    tuple(tuple(loss[u, o] for o in opts[u]) for u in self.units),
                    tuple(tuple(cost[u, o] for o in opts[u]) for u in self.units))

    def _added(self, u: str, o: Option) -> int:
        """The bytes unit u at option o adds to the reference's, from the shapes (negative: saves)."""
        names = self.groups[u]
        return (_predicted(self.infos, with_choice(self.reference, self.regexes, {u: o}), names)
                - _predicted(self.infos, self.reference, names))

    def _tick(self, what: str) -> None:
        self.done += 1
        if self.progress:
            self.progress(min(self.done, self.total), self.total, what)

    def _labels(self) -> str:
        return ", ".join(o.label for o in self.ladder)


def _same(now: Recipe, then: Recipe, names) -> bool:
    """Whether recipe `then` gives each of the layers `names` the recipe `now` gives it."""
    return all(now.for_layer(n) == then.for_layer(n) for n in names)


def _predicted(infos: dict, recipe: Recipe, names) -> int:
    """The bytes layers `names` (among `infos`, name -> LayerInfo) store under `recipe`, from
    their shapes (engine.pipeline.compress.predict)."""
    from engine.pipeline.compress import predict

    return sum(predict(infos[n], recipe.for_layer(n)).bytes.compressed_bytes for n in names if n in infos)

