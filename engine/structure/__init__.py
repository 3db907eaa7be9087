"""Structured pruning: whole attention heads, MLP channels and transformer blocks removed, so the
model stays dense and becomes smaller.

    blocks.py      where a block's projections are (one table of layouts, keyed by the block's class)
    importance.py  pure functions that score heads, channels and blocks (magnitude or calibration)
    removal.py     the plan (how many of each to remove, from a recipe), the choice (which, from the
                   scores) and the surgery (a smaller copy of the model, the pruned parts sliced out)
"""
