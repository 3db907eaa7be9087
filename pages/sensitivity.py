"""Sensitivity and the budget planner: which layers can take fewer bits, and a plan for a target."""
import dataclasses

import pandas as pd
import streamlit as st

from engine import plan
from engine.glossary import CONCEPTS
from engine.recipe import Recipe
from ui import charts, context, controls

ctx = context.page(__file__)
recipe = ctx.recipe
st.title("Sensitivity and plan")
st.caption("Each unit of layers is quantized alone at each bit width (the rest of the model left alone, the "
           "sidebar's other settings kept) and the first estimate of quality measured. The planner then picks "
           "a bit width per unit that fits a memory target with the least total loss, treating the losses "
           "as additive, and measures the plan beside the uniform setting of the nearest size.")

with st.form("sensitivity_form"):
    c = st.columns(3)
    by = c[0].radio("Unit", plan.UNITS, index=2, key="sensitivity_by", horizontal=True,
                    format_func={"layer": "layer", "block": "block", "type": "layer type"}.get,
                    help="One layer; every layer of one transformer block; or one kind of layer across blocks.")
    ladder = c[1].multiselect("Bit widths", [8, 6, 5, 4, 3, 2], default=[8, 4, 3, 2], key="sensitivity_bits",
                              help=CONCEPTS["bits"])
    target = c[2].slider("Planner target (compressed / fp16)", 0.3, 0.95, 0.65, 0.01, key="sensitivity_target")
    run = st.form_submit_button("Measure and plan", type="primary")

results = st.session_state.setdefault("plans", {})
key = (ctx.key, recipe.to_json())
if run:
    if not ladder:
        st.error("Choose at least one bit width.")
    else:
        base = dataclasses.replace(recipe, bits=min(ladder))
        context.ensure_calibration(ctx, base)
        bar = st.progress(0.0, text="Measuring…")
        result = context.shielded("Measuring and planning", plan.plan, ctx.work, target, base, by, ladder,
                                  progress=lambda k, n, what: bar.progress(k / n, text=f"{k} of {n}: {what}"))
        if result is not None:
            results[key] = result
        bar.empty()

result = results.get(key)
if not result:
    st.info("Choose the unit, bit widths and target, and press **Measure and plan**.")
    st.stop()
grid = result["grid"]
metric = result["metric"]
st.subheader("Sensitivity", help=f"Loss: how much {metric} gets worse (first estimate) with only that unit at "
             "that bit width.")
st.plotly_chart(charts.sensitivity_heatmap(grid), config=charts.PNG, key="sensitivity_heatmap")
rows = [{"unit": u, **{f"{b} bits": grid["loss"][i][j] for j, b in enumerate(grid["bits"])}}
        for i, u in enumerate(grid["units"])]
df = pd.DataFrame(rows)
st.download_button("Download sensitivity (CSV)", df.to_csv(index=False),
                   f"{ctx.ref.replace('/', '_')}-sensitivity.csv", "text/csv")

st.subheader("Plan")
p, uni = result["plan"], result["uniform"]
c = st.columns(2)
c[0].metric(f"Planned: {metric}", f"{p['metrics'][metric]:.4g}",
            help=f"{charts.human_bytes(p['compressed_bytes'])}, ratio {p['ratio']:.4f} (target "
                 f"{result['target_ratio']:.2f})")
c[1].metric(f"Uniform {uni['recipe']}: {metric}", f"{uni['metrics'][metric]:.4g}",
            help=f"{charts.human_bytes(uni['compressed_bytes'])}, ratio {uni['ratio']:.4f}")
st.caption(f"Planned {charts.human_bytes(p['compressed_bytes'])} (ratio {p['ratio']:.4f}) against uniform "
           f"{charts.human_bytes(uni['compressed_bytes'])} (ratio {uni['ratio']:.4f}); baseline {metric} "
           f"{result['baseline'][metric]:.4g}; full protocol for both.")
st.dataframe([{"unit": u["unit"], "layers": len(u["layers"]), "bits": u["bits"]} for u in result["units"]],
             hide_index=True, width="stretch")
planned = Recipe.from_dict(result["recipe"])
st.caption(f"The plan as a recipe: **{planned.describe()}** (a per-layer rule for each unit not at "
           f"{planned.bits} bits). Use it in the sidebar to explore, export or sweep it like any recipe.")
c = st.columns(2)
c[0].button("Use this plan in the sidebar", key="sensitivity_use", on_click=controls.set_controls,
            args=(planned, "the plan"), type="primary")
c[1].download_button("Download the plan (recipe JSON)", planned.to_json(),
                     f"{ctx.ref.replace('/', '_')}-plan.json", "application/json")
