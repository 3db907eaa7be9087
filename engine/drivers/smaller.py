"""The parts a structured recipe removes, chosen on a loaded model (engine.structure scores them),
and a plain model made of a workspace's values (where a gradual schedule's next step starts).
The explorer (engine.drivers.explorer) derives the smaller models' explorers from these.
"""
from __future__ import annotations

import torch

from engine.drivers.workspace import module_copy
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
