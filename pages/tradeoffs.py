"""Trade-offs: a sweep over rank / bits / sparsity, quality against memory, the Pareto frontier."""
import dataclasses

import pandas as pd
import streamlit as st

from charts import figures
from engine.glossary import CONCEPTS, HIGHER_IS_BETTER, metric_name
from engine.studies import sweep
from ui import caches, context, results
from ui import cluster as on_cluster
from ui import variants as methods

ctx = context.page(__file__)
ex, recipe = ctx.explorer, ctx.recipe
st.title("Trade-offs")
st.caption("Every combination of the values below, on top of the sidebar's other settings (group size, "
           "symmetry, N:M pattern, layers). " + CONCEPTS["pareto"])

with st.form("tradeoffs_grid"):
    c = st.columns(3)
    ratios = c[0].multiselect("Rank (fraction of full)", [1.0, 0.9, 0.75, 0.5, 0.25], default=[1.0, 0.75, 0.5],
                              key="tradeoffs_ratios", help=CONCEPTS["rank_ratio"])
    bits = c[1].multiselect("Bit widths", [16, 8, 6, 5, 4, 3, 2], default=[16, 8, 4, 3], key="tradeoffs_bits",
                            help=CONCEPTS["bits"])
    nm = recipe.pattern != "unstructured"
    sparsities = c[2].multiselect(
        "Sparsity" + (f" (0 or the {recipe.pattern} pattern)" if nm else ""),
        [0.0, 0.5] if nm else [0.0, 0.25, 0.5, 0.75], default=[0.0, 0.5], key="tradeoffs_sparsity",
        help=CONCEPTS["sparsity"])
    variants = st.multiselect(
        "Methods (one frontier each)", [*methods.METHOD_VARIANTS, *methods.FORMAT_VARIANTS, *methods.LLAMA_VARIANTS],
        default=["As in the sidebar"], key="tradeoffs_methods",
        help="Put methods side by side on the same grid: " + CONCEPTS["quant_method"] + " " + CONCEPTS["prune_method"]
             + " llama.cpp's mixes and types are their own points (the grid's values do not apply to them): "
               "each of its mixes, with or without an importance matrix, and its legacy types by GPTQ; so "
               "are the number formats (NF4, FP4, MXFP4, NVFP4, FP8), each with its own bits and blocks.")
    full = st.toggle("Full protocol for every point (slower; off: the first estimate on a small slice)",
                     key="tradeoffs_full")
    run = st.form_submit_button("Run sweep", type="primary")

sweeps = caches.session_map("sweeps", caches.SESSION_SWEEPS)  # one per model, the latest few
cluster = on_cluster.runner(ctx)  # None: measured in this process
if run:
    if not (ratios and bits and sparsities and variants):
        st.error("Choose at least one value of each control and one method.")
    else:
        # the grid's values on the sidebar's other fields, by the plain methods: each variant then sets its own
        base = dataclasses.replace(recipe, rank=None, rank_ratio=None, bits=16, number_format="int",
                                   **methods.PLAIN, sparsity=0.0 if nm else recipe.sparsity)
        grid = sweep.grid(sorted(ratios, reverse=True), sorted(bits, reverse=True), sorted(sparsities),
                          base if not nm else dataclasses.replace(base, pattern=recipe.pattern, sparsity=0.0))
        points, refused = [], []
        for v in variants:
            if v in methods.METHOD_VARIANTS:
                kept, no = methods.method_points(grid, v, recipe)
                points, refused = points + [(v, r) for r in kept], refused + no
        points += [(v, r) for v in variants if v in methods.FORMAT_VARIANTS for r in methods.format_points(v, recipe)]
        points += [(v, r) for v in variants if v in methods.LLAMA_VARIANTS for r in methods.llama_points(v, ex)]
        if refused:
            st.warning(f"{len(refused)} point(s) left out, their methods cannot take them:\n\n"
                       + "\n\n".join(f"- {line}" for line in refused))
        if not points:
            st.error("None of the chosen methods can take these points.")
            st.stop()
        if cluster is None and any(r.rank_ratio is not None for _, r in points):
            context.ensure_factors(ctx)
        bar = st.progress(0.0, text=f"0 of {len(points)} points")

        def measure():
            if cluster is not None:
                return on_cluster.sweep_rows(cluster, points, full, bar)
            rows = []
            for k, (variant, r) in enumerate(points):
                if r.calibrated:
                    context.ensure_calibration(ctx, r)
                mem = results.memory(ctx, r)
                metrics = results.quality(ctx, quick=not full, recipe=r)
                # the recipe's columns as the command line's sweep writes them (sweep.recipe_columns)
                rows.append({"method": variant, **sweep.recipe_columns(r), "label": r.describe(),
                             "compressed_bytes": mem["compressed_bytes"], "original_bytes": mem["original_bytes"],
                             "ratio": mem["ratio"], **metrics, "estimate_only": not full,
                             "recipe": r.to_json().replace("\n", "")})
                bar.progress((k + 1) / len(points), text=f"{k + 1} of {len(points)} points: {r.describe()}")
            return rows

        rows = context.shielded("The sweep", measure)
        bar.empty()
        if rows is not None:
            sweeps[ctx.key] = {"rows": rows, "full": full}

done = sweeps.get(ctx.key)
if not done:
    st.info("Choose the values and press **Run sweep**.")
    st.stop()
rows = done["rows"]
metrics = [m for m in HIGHER_IS_BETTER if all(m in r for r in rows)]
metric = st.selectbox("Quality metric", metrics, key="tradeoffs_metric", format_func=metric_name,
                      help=CONCEPTS.get(metrics[0]))
higher = HIGHER_IS_BETTER[metric]
done["metric"] = metric  # the Explore page's report draws this chart
fronts = sweep.fronts(rows, metric, higher)
front = sorted({i for f in fronts.values() for i in f})
cur_mem = results.memory(ctx)
cur_q = results.quality(ctx, quick=not done["full"])
current = {"label": recipe.describe(), "compressed_bytes": cur_mem["compressed_bytes"], **cur_q}
label = (f"{metric_name(metric)} ({'higher' if higher else 'lower'} is better"
         + ("" if done["full"] else ", first estimate") + ")")
st.plotly_chart(figures.tradeoff(rows, metric, higher, fronts, current if metric in cur_q else None, label),
                config=figures.PNG, key="tradeoffs_chart")
st.caption(f"{len(rows)} points, {len(front)} on a frontier ({len(fronts)} method(s)). Hover a point for its recipe; the camera icon "
           "saves the chart as PNG.")
df = pd.DataFrame(rows)
df["on_frontier"] = [i in set(front) for i in range(len(rows))]
st.download_button("Download points (CSV)", df.to_csv(index=False), f"{ctx.ref.replace('/', '_')}-sweep.csv",
                   "text/csv")
shown = df.drop(columns=["recipe"])  # the metrics under their names; the CSV keeps the keys
st.dataframe(shown.rename(columns=metric_name), hide_index=True, width="stretch")
