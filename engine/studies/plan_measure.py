"""How the planner (engine.studies.planner) measures: a choice of option per unit as a recipe
(`with_choice`), its first estimate on the planning text as a loss (`score`), each choice once
(`_Measure`), many at once on a runner (engine.studies.runner) with the tasks below."""
from __future__ import annotations

import json
import math

from engine.glossary import HIGHER_IS_BETTER
from engine.recipe.recipe import Recipe
from engine.studies.planner_options import REFERENCE


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


def measure_task(worker, job) -> tuple[float, int]:
    """A runner's task (engine.studies.runner): a recipe's first estimate on a text, as a loss
    (`score`), and its bytes."""
    recipe, text, name, metric = job
    applied = worker.work.apply(recipe)
    metrics = worker.work.evaluate(quick=True, eval_text=text, eval_name=name)
    return score(metrics, metric), applied.memory.compressed_bytes


def full_task(worker, recipe: Recipe) -> tuple[int, dict]:
    """A runner's task: a recipe's bytes and its metrics with the full protocol."""
    applied = worker.work.apply(recipe)
    return applied.memory.compressed_bytes, worker.work.evaluate()


class _Measure:
    """Apply a choice and take its first estimate on the planning text and its bytes, each choice
    once; `prefetch` measures many at once on the runner, as each arrives telling `on_result`
    (key, [loss, bytes], worker), the key naming the model, the text and the recipe."""

    def __init__(self, work, reference: Recipe, regexes: dict, runner=None, done=None, on_result=None, tick=None):
        from engine.studies.runner import Local

        self.work, self.reference, self.regexes = work, reference, regexes
        self.text, self.name = planning_text(work.explorer.kind)
        self.metric = work.explorer.evaluator(self.text, self.name).primary
        self.runner = runner or Local(work.explorer, work)
        self.done, self.on_result, self.tick = dict(done or {}), on_result, tick
        self.seen: dict = {}

    def _key(self, choice: dict) -> tuple:
        return tuple(sorted((u, o.label) for u, o in choice.items() if o != REFERENCE))

    def prefetch(self, choices: list[dict]) -> None:
        """Measure the choices not measured yet, all at once on the runner."""
        from engine.studies.runner import gather

        jobs, keys = {}, {}
        for choice in choices:
            key = self._key(choice)
            if key in self.seen or key in keys.values():
                continue
            recipe = with_choice(self.reference, self.regexes, choice)
            name = json.dumps([self.work.explorer.loaded.ref, self.name, recipe.to_dict()])
            jobs[name], keys[name] = (recipe, self.text, self.name, self.metric), key
        labels = {name: ", ".join(f"{u} at {o}" for u, o in keys[name]) or "the reference" for name in jobs}

        def arrived(name, result, worker):
            if self.on_result:
                self.on_result(name, list(result), worker)
            if self.tick:
                self.tick(f"{worker}: {labels[name]}")

        for name, (loss, size) in gather(self.runner, measure_task, jobs, self.done, arrived).items():
            self.seen[keys[name]] = (loss, int(size))

    def __call__(self, choice: dict) -> tuple[float, int]:
        if self._key(choice) not in self.seen:
            self.prefetch([choice])
        return self.seen[self._key(choice)]
