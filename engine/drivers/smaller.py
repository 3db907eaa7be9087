"""Smaller models: the parts a structured recipe removes, chosen on a loaded model (engine.structure
scores them), the explorers of the smaller models (`Smaller`, which engine.drivers.explorer.Explorer
is), and a plain model made of a workspace's values (where a gradual schedule's next step starts).
"""
from __future__ import annotations

import dataclasses

import torch

from engine.drivers import awq_fold
from engine.drivers.workspace import module_copy
from engine.models import calibrate
from engine.recipe.recipe import Recipe
from engine.structure import blocks, importance, removal


def choose(ex, recipe):
    """The Structure `recipe` keeps of the explorer `ex`'s model, by its structure_importance:
    calibration scores a group or channel by its output change on the calibration statistics of
    `ex` (magnitude where a layer has none) and a block by its influence; magnitude by the weights
    alone. None when the recipe removes nothing here."""
    found = blocks.find(ex.loaded.model)
    plan = removal.counts(recipe, found)
    if plan.empty:
        return None
    lay = found.layout
    by_calibration = recipe.structure_importance == "calibration"

    def head_scores(k):
        o, v = found.names(k, lay.o, lay.v)
        groups = blocks.heads(found.blocks[k], lay)[1]
        h = ex.hessian(o) if by_calibration else None
        return (importance.head_groups_calibrated(ex.weight(o), h, groups) if h is not None
                else importance.head_groups_magnitude(ex.weight(v), ex.weight(o), groups))

    def channel_scores(k):
        down, *ins = found.names(k, lay.down, *lay.mlp_inputs())
        h = ex.hessian(down) if by_calibration else None
        return (importance.channels_calibrated(ex.weight(down), h) if h is not None
                else importance.channels_magnitude([ex.weight(n) for n in ins], ex.weight(down)))

    def block_scores():
        if by_calibration:
            return torch.tensor(ex.block_influence())
        return torch.stack([importance.block_magnitude(*(ex.weight(n) for n in found.names(k, lay.o, lay.down)))
                            for k in range(len(found.blocks))])

    return removal.choose(plan, head_scores, channel_scores, block_scores, recipe.structure_importance)


def values_model(work) -> torch.nn.Module:
    """A copy of the modules of `work`'s model with each compressible layer's parameter set to
    what the workspace holds (dense: zeros where pruned, the grid's values where quantized); every
    other tensor shared with the model the workspace copied. Not for a workspace whose AWQ scales
    live in its norms (a schedule folds them at its last step only, which is not copied)."""
    if work._folds is not None and work._folds.norms:
        raise ValueError("values_model: the workspace's norms hold folded AWQ scales")
    model = module_copy(work.explorer.loaded.model)
    made = {}
    with torch.no_grad():
        for info in work.explorer.layers:
            if info.tied_to is None and info.name in work.stored:  # a layer left alone keeps the original's tensor
                made[info.name] = torch.nn.Parameter(
                    info.kind.to_param(work.holders[info.name].matrix().detach().clone()), requires_grad=False)
        for info in work.explorer.layers:  # a tied head (or embedding) takes its embedding's new tensor: still tied
            name = info.tied_to or info.name
            if name in made:
                module_name, _, pname = info.param_name.rpartition(".")
                setattr(model.get_submodule(module_name), pname, made[name])
    return model


class Smaller:
    """What an Explorer does for structured pruning (and AWQ's folds, which also reach across
    layers): derive the explorers of smaller models, each judged against the original (`root`)
    and cut from `start` (the original, or a schedule's step). Explorer.__init__ sets the state
    it reads: root, start, structure, _lock, _eval_lock, _smaller, _structures, _influence, _folds."""

    @property
    def removed_params(self) -> int:
        """Parameters the original has that this (smaller) model does not."""
        return self.root.total_params - self.total_params

    def structured(self, recipe: Recipe) -> "Smaller":
        """The explorer of the smaller model `recipe` makes by removing heads, channels and
        blocks (engine.structure), cached; this explorer itself when it removes nothing. The
        parts removed are the least important by the recipe's structure_importance, scored on
        the original (engine.structure.importance)."""
        start = self.start
        if not recipe.structured:
            return start
        key = recipe.removal_key()
        with start._lock:
            if key not in start._structures:
                start._structures[key] = start._choose(recipe)
        structure = start._structures[key]
        return start if structure is None else start.smaller(structure)

    def smaller(self, structure) -> "Smaller":
        """The explorer of the model this one starts from (`start`) with only what `structure`
        (engine.structure.removal.Structure, by index into that model) keeps."""
        start = self.start
        with start._lock:
            return start._smaller.get_or_put(structure, lambda: start._derive(structure))

    def _derive(self, structure) -> "Smaller":
        model = removal.remove(self.loaded.model, structure)
        kept, total = sum(p.numel() for p in model.parameters()), self.root.total_params
        note = f"{self.root.loaded.note + '; ' if self.root.loaded.note else ''}smaller model: {total - kept:,} " \
               f"of {total:,} parameters removed (heads, channels, blocks)"
        derived = type(self)(dataclasses.replace(self.loaded, model=model, note=note))
        derived.root, derived.start = self.root, self
        derived.structure = removal.compose(self.structure, structure)
        return derived

    def from_values(self, work) -> "Smaller":
        """An explorer that starts from the values `work` (a workspace of this explorer) holds, as
        plain dense matrices (a schedule's next step starts there): judged against the original,
        with what of the original it keeps."""
        derived = type(self)(dataclasses.replace(work.explorer.loaded, model=values_model(work)))
        derived.root, derived.structure = self.root, work.explorer.structure
        return derived

    def _choose(self, recipe: Recipe):
        """The Structure `recipe` keeps on this model (engine.drivers.smaller.choose); None: nothing removed."""
        return choose(self, recipe)

    def awq_folds(self, recipe: Recipe) -> awq_fold.Folds:
        """Where `recipe`'s AWQ scales fold into the module before (engine.drivers.awq_fold), their
        scales searched once per recipe; nothing for a recipe without AWQ."""
        if not any(r.quant_method == "awq" and r.bits < 16 for r in (recipe, *recipe.rule_recipes())):
            return awq_fold.Folds({}, {}, ())
        return self._folds.get_or_put(recipe, lambda: awq_fold.plan(self, recipe))

    def each_removes(self, recipe: Recipe) -> dict:
        """What each structured field of `recipe` removes on its own, in words and parameters
        (engine.structure.removal.each_removes); a UserError for a model of no known layout."""
        return removal.each_removes(recipe, blocks.find(self.root.loaded.model))

    def block_influence(self) -> list[float]:
        """Each block's influence on the calibration text (ShortGPT), computed once."""
        with self._eval_lock:
            if self._influence is None:
                model = module_copy(self.loaded.model)
                self._influence = calibrate.block_influence(model, self.loaded.tokenizer, blocks.find(model).blocks)
            return self._influence
