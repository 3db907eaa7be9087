"""The guided tour ("Start here"): each step is a link (?tour=N) that sets the controls to a
recipe and opens a page, with a sentence or two on what to look at and why; the same link, shared,
opens that step in a new session. Steps hold for any model (both offline
models were walked through)."""
from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.recipe.recipe import Recipe

from . import controls


@dataclass(frozen=True)
class Step:
    title: str
    page: str  # the page's file
    recipe: Recipe
    look: str  # what to look at, and why


STEPS = (
    Step("Start from the model as it is", "pages/explore.py", Recipe(),
         "Nothing is compressed: the memory bar shows the fp16 weights every figure compares with, and quality "
         "is the model against itself. (smollm2's fp32 weights are a dequantized 4-bit model, its only offline "
         "copy: that is its baseline.)"),
    Step("A spectrum that falls fast compresses well", "pages/spectra.py", Recipe(rank_ratio=0.5),
         "Each layer's singular values, largest first. Where they fall fast, a low rank keeps most of the "
         "energy; trained weights fall slowly, so even half the rank drops energy the outputs notice (Explore "
         "shows how much). Below the break-even rank the two "
         "factors take less memory than the matrix; at or above it they take more."),
    Step("4 bits: a quarter of the memory, little lost", "pages/explore.py", Recipe(bits=4),
         "Round to nearest, 16 levels per group of 128 weights with one fp16 scale each: about 4.1 bits a "
         "weight. Compare the compressed bytes and the quality with step 1."),
    Step("3 bits is where round to nearest breaks", "pages/layer.py", Recipe(bits=3),
         "Eight levels per group. The group shown has the largest scale: one outlier stretches its grid, and "
         "most of its weights crowd onto the few levels near zero. The scale map shows where such outliers "
         "sit. Then open Explore: quality falls much more from 4 to 3 bits than from 16 to 4."),
    Step("GPTQ: the same bytes, better quality", "pages/explore.py", Recipe(bits=3, quant_method="gptq"),
         "The same 3-bit grid and the same bytes as step 4. GPTQ rounds one input column at a time and "
         "pushes each rounding error onto the columns not yet rounded, weighted by real inputs: compare the "
         "quality with step 4."),
    Step("Wanda keeps what matters for the outputs", "pages/layer.py", Recipe(sparsity=0.5, prune_method="wanda"),
         "Half of every layer's weights removed. In the Pruning tab, Wanda's mask differs from magnitude's: a "
         "small weight on a large input matters more than its size says. Same count, same bytes."),
    Step("Choose on the frontier", "pages/tradeoffs.py", Recipe(bits=4),
         "Run a sweep: every point is a setting measured on real text, and the frontier is the settings no "
         "other beats on both memory and quality. That is where a recipe to ship is chosen."),
)


def link(i: int) -> dict[str, str]:
    """The URL parameters of step i (0-based): the step, and the sidebar's model and device."""
    from engine.models.loading import DEFAULT_MODEL

    return {"tour": str(i + 1), **controls.link_params(None, st.session_state["ctl_model"], DEFAULT_MODEL,
                                                        st.session_state["ctl_device"])}


def from_url() -> None:
    """A tour step's link (?tour=N, 1-based): the controls set to its recipe before they draw,
    the parameter then dropped (the URL goes on following the controls)."""
    n = st.query_params.get("tour")
    if n is None:
        return
    st.query_params.pop("tour")
    if not n.isdigit() or not 1 <= int(n) <= len(STEPS):
        st.session_state["url_errors"].append("tour")
        return
    controls.set_controls(STEPS[int(n) - 1].recipe, STEPS[int(n) - 1].title)
    st.session_state["tour_step"] = int(n) - 1
