"""The budget planner: a setting per unit of layers that beats the uniform setting of the same bytes.

    p = plan(work, Recipe(bits=3))                      # at the bytes of uniform 3 bits, group 128
    p = plan(work, Recipe(bits=4), target_ratio=0.28)   # or at a target size (fraction of fp16)
    p["recipe"]                                         # the plan: a recipe with per-layer rules

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
import math

from engine.errors import UserError
from engine.glossary import HIGHER_IS_BETTER
from engine.recipe.fields import RecipeError
from engine.recipe.recipe import Recipe
from engine.studies.options import REFERENCE, Option, default_ladder, parse_ladder, parse_option, wider_ladder
from engine.studies.sensitivity import _groups, unit_regex

# the options, written and offered, live in engine.studies.options; the planner's callers find them here too
__all__ = ["plan", "least_loss", "candidates", "with_choice", "score", "planning_text", "PLAN_PARAGRAPHS",
           "REFERENCE", "Option", "parse_option", "parse_ladder", "default_ladder", "wider_ladder"]


def score(metrics: dict, metric: str) -> float:
    """The primary metric as a loss to add up (lower is better): log perplexity, whose changes
    multiply the perplexity; else the metric's negative where higher is better."""
    v = metrics[metric]
    if metric == "perplexity":
        return math.log(v)
    return -v if HIGHER_IS_BETTER[metric] else v


def with_choice(reference: Recipe, regexes: dict, choice: dict) -> Recipe:
    """The reference with a per-layer rule, before its own, for every unit not at REFERENCE."""
    rules = [{"match": regexes[u], **o.rule} for u, o in choice.items() if o != REFERENCE]
    if not rules:
        return reference
    own = reference.to_dict()["per_layer"]
    return reference.updated(per_layer=rules + own, distill_steps=0)


def least_loss(units: list, options: dict, loss: dict, cost: dict, budget: float, step: float | None = None,
               keep: dict | None = None, max_changes: int | None = None) -> dict | None:
    """The option per unit with the least total `loss` whose total `cost` (bytes, relative to
    the current setting: negative saves) is at most `budget`: a multiple-choice knapsack solved
    exactly by dynamic programming over costs counted in `step`s (default 1/8000 of the widest
    range of costs), each rounded up, so the real total never exceeds what is counted (exact when
    every cost is a multiple of the step). With `max_changes`, at most that many units take an
    option other than their `keep` one. None: nothing fits."""
    step = step or (sum(max(abs(cost[u, o]) for o in options[u]) for u in units) or 1.0) / 8000
    w = {k: math.ceil(c / step - 1e-9) for k, c in cost.items()}
    cap = math.floor(budget / step + 1e-9)
    # the least total still to come, so that states that can no longer fit are dropped
    rest = [0] * (len(units) + 1)
    for i in range(len(units) - 1, -1, -1):
        rest[i] = rest[i + 1] + min(w[units[i], o] for o in options[units[i]])
    best = {(0, 0): (0.0, ())}  # (counted cost, units changed) -> (loss, options so far)
    for i, u in enumerate(units):
        nxt = {}
        for (s, n), (c, picks) in best.items():
            for o in options[u]:
                s2, c2 = s + w[u, o], c + loss[u, o]
                n2 = n + (max_changes is not None and o != keep[u])
                if s2 + rest[i + 1] > cap or (max_changes is not None and n2 > max_changes):
                    continue
                if (s2, n2) not in nxt or c2 < nxt[s2, n2][0]:
                    nxt[s2, n2] = (c2, picks + (o,))
        best = nxt
    if not best:
        return None
    _, picks = min(best.values(), key=lambda v: v[0])
    return dict(zip(units, picks))


def candidates(units: list, options: dict, loss: dict, cost: dict, budget: float, center: dict) -> list[dict]:
    """The knapsack's choices changing at most 1, 2, 3, 4, 6, 8, ... units from `center`, up to
    the unconstrained one, fewest changes first: small moves add up more faithfully than large
    ones, so each is measured, not only the one predicted best."""
    full = least_loss(units, options, loss, cost, budget)
    if full is None:
        return []
    changed = sum(full[u] != center[u] for u in units)
    out, k = [], 1
    while k < changed:
        c = least_loss(units, options, loss, cost, budget, keep=center, max_changes=k)
        if c is not None and c != center and c not in out:
            out.append(c)
        k = k + 1 if k < 4 else k * 2
    return out + ([full] if full not in out else [])


PLAN_PARAGRAPHS = 16  # of the calibration text: the planner measures on them, never on the evaluation text
NEWS_KINDS = ("causal-lm", "seq2seq")  # the kinds whose evaluation reads the 300 Lee news articles


def planning_text(kind: str) -> tuple[str, str]:
    """The text the planner measures on, one paragraph per line, and its name: text the
    evaluation never reads, so that the full protocol scores the plan on text it was not chosen
    on, and of the evaluation's kind where there is one. For a language model, scored on the
    300 Lee news articles, the 50 Lee documents (gensim lee.cor: news of the same source, none of
    the 300); for an encoder or a classifier, whose evaluation reads those 50, the first
    PLAN_PARAGRAPHS paragraphs of the calibration text (engine.models.calibrate)."""
    if kind in NEWS_KINDS:
        from engine.models.data import lee_documents

        return "\n".join(lee_documents()), "gensim lee.cor (the 50 Lee news documents, none of the 300 evaluated)"
    from engine.models.calibrate import SOURCE, wiki_paragraphs

    return "\n".join(wiki_paragraphs(PLAN_PARAGRAPHS)), f"{SOURCE}, first {PLAN_PARAGRAPHS} paragraphs"


class _Measure:
    """Apply a choice and take its first estimate on the planning text and its bytes, each choice once."""

    def __init__(self, work, reference: Recipe, regexes: dict):
        self.work, self.reference, self.regexes = work, reference, regexes
        self.text, self.name = planning_text(work.explorer.kind)
        self.metric = work.explorer.evaluator(self.text, self.name).primary
        self.seen: dict = {}

    def __call__(self, choice: dict) -> tuple[float, int]:
        key = tuple(sorted((u, o.label) for u, o in choice.items() if o != REFERENCE))
        if key not in self.seen:
            applied = self.work.apply(with_choice(self.reference, self.regexes, choice))
            metrics = self.work.evaluate(quick=True, eval_text=self.text, eval_name=self.name)
            self.seen[key] = (score(metrics, self.metric), applied.memory.compressed_bytes)
        return self.seen[key]


def plan(work, reference: Recipe, target_ratio: float | None = None, by: str = "type", ladder=None,
         rounds: int = 2, progress=None) -> dict:
    """The option per unit (of `ladder`, default `default_ladder`) with the least measured loss
    within the bytes of `reference` applied (or `target_ratio` of the fp16 bytes), and, with the
    full protocol, the plan beside the reference."""
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
    ex = work.explorer
    ev = ex.evaluator()
    groups = _groups(ex, reference, by)
    everything = [i.name for i in ex.selected(reference)]
    regexes = {u: unit_regex(u, names, everything) for u, names in groups.items()}
    measure = _Measure(work, reference, regexes)
    original = 2 * ex.total_params
    units = list(groups)
    options = {u: [REFERENCE] + [o for o in ladder if o != REFERENCE] for u in units}
    infos = {i.name: i for i in ex.layers if i.tied_to is None}

    def added(u, o) -> int:
        """The bytes unit u at option o adds to the reference's, from the shapes (negative: saves)."""
        return (_predicted(infos, with_choice(reference, regexes, {u: o}), groups[u])
                - _predicted(infos, reference, groups[u]))

    if target_ratio is not None:  # refused before anything is measured, from the bytes of the shapes
        smallest = work.apply(reference).memory.compressed_bytes + sum(
            min(added(u, o) for o in options[u]) for u in units)
        if smallest > target_ratio * original:
            raise UserError(f"the target {target_ratio} cannot be reached with the options "
                            f"{', '.join(o.label for o in ladder)} by {by} (smallest: {smallest / original:.3f} of fp16)")
    ref_loss, ref_bytes = measure({})
    budget = ref_bytes if target_ratio is None else target_ratio * original
    total = rounds * len(units) * len(ladder) + len(ladder) + 1
    done = [0]

    def tick(what):
        done[0] += 1
        if progress:
            progress(min(done[0], total), total, what)

    center = {u: REFERENCE for u in units}
    best = (ref_loss, ref_bytes, dict(center)) if ref_bytes <= budget else None
    history, grid = [], None

    def consider(choice: dict, round_: int, predicted: float | None):
        """Measure a candidate, write it in the history, and keep it if it is the best within the budget."""
        nonlocal best
        got, got_bytes = measure(choice)
        history.append({"round": round_, "changes": sum(choice[u] != center[u] for u in units),
                        "predicted": predicted, "measured": got, "bytes": got_bytes,
                        "choice": {u: o.label for u, o in choice.items()}})
        if got_bytes <= budget and (best is None or got < best[0]):
            best = (got, got_bytes, choice)

    for o in ladder:  # each option for every unit, where its bytes fit, is a candidate too
        tick(f"every unit at {o.label}")
        if ref_bytes + sum(added(u, o) for u in units) <= budget:
            consider({u: o for u in units}, 0, None)
    rounds_run = 0
    for r in range(rounds):
        rounds_run = r + 1
        c_loss, c_bytes = measure(center)
        now = with_choice(reference, regexes, center)  # every layer's recipe at the center of this round
        loss, cost = {}, {}
        for u in units:
            for o in options[u]:
                if o == center[u] or _same(now, with_choice(reference, regexes, {**center, u: o}), groups[u]):
                    loss[u, o], cost[u, o] = 0.0, 0
                    continue
                l, b = measure({**center, u: o})
                loss[u, o], cost[u, o] = l - c_loss, b - c_bytes
                tick(f"round {r + 1}: {u} at {o.label}")
        if grid is None:
            grid = {"metric": measure.metric, "text": measure.name, "by": by, "units": units,
                    "options": [o.label for o in options[units[0]]], "reference": reference.describe(),
                    "loss": [[loss[u, o] for o in options[u]] for u in units],
                    "bytes": [[cost[u, o] for o in options[u]] for u in units]}
        found = candidates(units, options, loss, cost, budget - c_bytes, center)
        if not found:
            if r == 0 and best is None:
                raise UserError(f"the target {target_ratio} cannot be reached with the options "
                                f"{', '.join(o.label for o in ladder)} by {by}")
            break
        for choice in found:
            consider(choice, r + 1, c_loss + sum(loss[u, choice[u]] for u in units))
        if best is None or best[2] == center:
            break  # no move measured better: another round would measure the same
        center = best[2]  # the next round around the best so far (a round's own, or an option everywhere)
    if best is None:
        raise UserError(f"the target {target_ratio} cannot be reached with the options by {by}")
    _, plan_bytes, choice = best
    recipe = with_choice(reference, regexes, choice)
    planned = work.apply(recipe)
    assert planned.memory.compressed_bytes == plan_bytes
    plan_metrics = work.evaluate()
    uniform = {"recipe": reference.describe(), "compressed_bytes": ref_bytes, "ratio": ref_bytes / original,
               "metrics": _full(work, reference)}
    return {
        "metric": ev.primary, "baseline": ev.baseline(), "target_ratio": target_ratio, "budget_bytes": budget,
        "by": by, "reference": reference.to_dict(), "ladder": [o.label for o in ladder], "recipe": recipe.to_dict(),
        "is_reference": all(o == REFERENCE for o in choice.values()),
        "units": [{"unit": u, "layers": groups[u], "choice": choice[u].label,
                   "loss_by_option": dict(zip(grid["options"], grid["loss"][i]))} for i, u in enumerate(units)],
        "grid": grid, "rounds": history, "rounds_run": rounds_run, "measured_choices": len(measure.seen),
        "plan": {"compressed_bytes": plan_bytes, "ratio": plan_bytes / original, "metrics": plan_metrics},
        "uniform": uniform,
    }


def _same(now: Recipe, then: Recipe, names) -> bool:
    """Whether recipe `then` gives each of the layers `names` the recipe `now` gives it."""
    return all(now.for_layer(n) == then.for_layer(n) for n in names)


def _predicted(infos: dict, recipe: Recipe, names) -> int:
    """The bytes layers `names` (among `infos`, name -> LayerInfo) store under `recipe`, from
    their shapes (engine.pipeline.compress.predict)."""
    from engine.pipeline.compress import predict

    return sum(predict(infos[n], recipe.for_layer(n)).bytes.compressed_bytes for n in names if n in infos)


def _full(work, recipe: Recipe) -> dict:
    work.apply(recipe)
    return work.evaluate()
