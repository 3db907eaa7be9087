"""Sensitivity in context and the budget planner: a setting per unit that beats the sidebar's recipe."""
import pandas as pd
import streamlit as st

from charts import figures
from engine.glossary import metric_name
from engine.studies import planner
from engine.studies import sensitivity as plan
from ui import caches, context, controls
from ui import cluster as on_cluster

ctx = context.page(__file__)
recipe = ctx.recipe
st.title("Sensitivity and plan")
st.caption("The planner gives each unit of layers its own setting (a bit width with its own group size or "
           "per-channel scales, with or without zero-points) so that the model stays within the bytes of the sidebar's recipe (or a target "
           "size) and measures better. It measures every option of every unit **in context**: with the rest of "
           "the model at the sidebar's recipe, not at full precision, since losses measured alone do not add "
           "up at 2 or 3 bits. It then picks the options with the least total loss that fit, measures the plan, "
           "and measures again around it. The plan and the sidebar's recipe are then scored with the full "
           "protocol, side by side.")
if recipe.bits >= 16 and recipe.number_format == "int":
    st.info("The planner competes with a quantized recipe: set a bit width (or a number format) in the sidebar.")
    st.stop()

ladder_default = [o.label for o in planner.default_ladder(recipe)]
ladder_all = [o.label for o in planner.wider_ladder(recipe)]
with st.form("sensitivity_form"):
    c = st.columns([2, 3, 2, 1])
    by = c[0].radio("Unit", plan.UNITS, index=2, key="sensitivity_by", horizontal=True,
                    format_func={"layer": "layer", "block": "block", "type": "layer type"}.get,
                    help="One layer; every layer of one transformer block; or one kind of layer across blocks.")
    ladder = c[1].multiselect("Options per unit", ladder_all, default=ladder_default, key="sensitivity_options",
                              accept_new_options=True,
                              help="3/g64: 3 bits in groups of 64 values; 3/ch: 3 bits, one scale per output "
                                   "channel; +z: with a zero-point per group as well (asymmetric). Type your own: "
                                   "4/r0.5 (rank ratio 0.5), 4/g64/s0.5 (half the values pruned). Each option "
                                   "is measured for each unit.")
    budget = c[2].radio("Bytes", ["as the sidebar's recipe", "a target size"], key="sensitivity_budget",
                        help="Stay within the bytes of the sidebar's recipe applied uniformly, or within a "
                             "fraction of the fp16 bytes.")
    target = c[2].slider("Target (compressed / fp16)", 0.1, 0.95, 0.3, 0.01, key="sensitivity_target")
    rounds = c[3].number_input("Rounds", 1, 5, 2, key="sensitivity_rounds",
                               help="Each round measures the options again around the best plan so far.")
    run = st.form_submit_button("Measure and plan", type="primary")

results = caches.session_map("plans", caches.SESSION_PLANS)  # per model and recipe, the latest few
key = (ctx.key, recipe.to_json())
cluster = on_cluster.runner(ctx)  # None: measured in this process
if run:
    if not ladder:
        st.error("Choose at least one option.")
    else:
        context.ensure_calibration(ctx, recipe)
        bar = st.progress(0.0, text="Measuring…")
        def measure_and_plan():  # a typed option that is not one is an error box, like any refusal
            return planner.plan(ctx.work, recipe, target if budget == "a target size" else None, by,
                                [planner.parse_option(o) for o in ladder], int(rounds),
                                progress=lambda k, n, what: bar.progress(k / n, text=f"{k} of {n}: {what}"),
                                runner=cluster)

        result = context.shielded("Measuring and planning", measure_and_plan)
        if result is not None:
            results[key] = result
        bar.empty()

result = results.get(key)
if not result:
    st.info("Choose the unit, the options and the bytes, and press **Measure and plan**.")
    st.stop()
grid = result.grid
metric = result.metric
st.subheader("Sensitivity in context", help=f"Loss: how much the first estimate of {metric_name(metric, True)} "
             "gets worse (log perplexity for a language model) with only that unit changed to that option and the rest at "
             f"{grid.reference}, measured on {grid.text}, which the evaluation never reads. Negative: "
             "better than the reference.")
st.plotly_chart(figures.sensitivity_heatmap(grid), config=figures.PNG, key="sensitivity_heatmap")
rows = [{"unit": u, **{o: grid.loss[i][j] for j, o in enumerate(grid.options)}}
        for i, u in enumerate(grid.units)]
df = pd.DataFrame(rows)
st.download_button("Download sensitivity (CSV)", df.to_csv(index=False),
                   f"{ctx.ref.replace('/', '_')}-sensitivity.csv", "text/csv")

st.subheader("Plan")
p, uni = result.planned, result.uniform
c = st.columns(2)
c[0].metric(f"Planned: {metric_name(metric, True)}", f"{p.metrics[metric]:.4g}",
            help=f"{figures.human_bytes(p.compressed_bytes)}, ratio {p.ratio:.4f}")
c[1].metric(f"{result.reference.describe()}: {metric_name(metric, True)}", f"{uni.metrics[metric]:.4g}",
            help=f"{figures.human_bytes(uni.compressed_bytes)}, ratio {uni.ratio:.4f}")
if result.is_reference:
    st.warning("No mix of these options measured better than the sidebar's recipe within its bytes: the plan is "
               "the sidebar's recipe itself.")
st.caption(f"Planned {figures.human_bytes(p.compressed_bytes)} (ratio {p.ratio:.4f}) against "
           f"{figures.human_bytes(uni.compressed_bytes)} (ratio {uni.ratio:.4f}) for the sidebar's recipe; "
           f"baseline {metric_name(metric, True)} {result.baseline[metric]:.4g}; full protocol for both. "
           f"{result.measured_choices} settings measured in {result.rounds_run} round(s).")
st.dataframe([{"unit": u.unit, "layers": len(u.layers), "setting": u.choice} for u in result.units],
             hide_index=True, width="stretch")
planned = result.recipe
st.caption(f"The plan as a recipe: **{planned.describe()}** (a per-layer rule for each unit not at the "
           "sidebar's setting). Use it in the sidebar to explore, export or sweep it like any recipe.")
c = st.columns(2)
c[0].button("Use this plan in the sidebar", key="sensitivity_use", on_click=controls.set_controls,
            args=(planned, "the plan"), type="primary")
c[1].download_button("Download the plan (recipe JSON)", planned.to_json(),
                     f"{ctx.ref.replace('/', '_')}-plan.json", "application/json")
