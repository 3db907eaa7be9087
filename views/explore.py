"""Explore: memory, per-layer error and quality after each change of the controls."""
import streamlit as st

from engine.glossary import CONCEPTS, HIGHER_IS_BETTER
from ui import charts, state

ctx = state.context()
if ctx is None:
    st.stop()
ex, recipe = ctx.explorer, ctx.recipe

st.title("Explore")
st.caption(f"**{ctx.ref}** · {ex.kind} · {ex.total_params:,} parameters · {ex.loaded.device} · "
           f"recipe: **{recipe.describe()}**")
if recipe.calibrated:
    st.caption(f"Calibration ({CONCEPTS['calibration']}): {ex.calibration().describe()}.")
ranks = ex.ranks_for(recipe)
if not ranks:
    st.warning("The layer choice selects no layer: nothing is compressed.")
elif recipe.rank_ratio is not None or recipe.rank is not None:
    st.caption("Low rank: " + "; ".join(
        f"{r['layers']} layers of full rank {r['full_rank']} → rank {r['rank'] or r['full_rank']}"
        + ("" if r["rank"] else " (dense)") for r in ranks))

# -- memory, byte for byte -----------------------------------------------------------------
mem = state.memory(ctx)
state.mark("memory")
c1, c2, c3 = st.columns(3)
c1.metric("Original (fp16)", charts.human_bytes(mem["original_bytes"]),
          help=f"Every parameter at 2 bytes; {charts.human_bytes(mem['original_bytes_fp32'])} at fp32.")
c2.metric("Compressed", charts.human_bytes(mem["compressed_bytes"]),
          delta=charts.human_bytes(mem["compressed_bytes"] - mem["original_bytes"]), delta_color="inverse",
          help="Exactly what would be stored: packed values, fp16 scales, zero-points, masks or indices, "
               "factors, and everything left alone at 2 bytes per parameter.")
c3.metric("Ratio", f"{mem['ratio']:.3f}", help="compressed bytes / original bytes (fp16)")
st.plotly_chart(charts.memory_bar(mem), config=charts.PNG, key="explore_memory")
over = [r["name"] for r in mem["layers"] if r["factors_exceed_dense"]]
if over:
    st.warning(f"{len(over)} layer(s) store factors larger than the dense matrix at this rank "
               f"(above the break-even rank): {', '.join(over[:4])}{'…' if len(over) > 4 else ''}. "
               + CONCEPTS["break_even_rank"])

# -- per-layer error -----------------------------------------------------------------------
st.subheader("Per-layer error", help=CONCEPTS["relative_error"] + " " + CONCEPTS["sqnr_db"])
if any(r["compressed"] for r in mem["layers"]):
    st.plotly_chart(charts.layer_errors(mem["layers"]), config=charts.PNG, key="explore_errors")
state.mark("layer_errors")
with st.expander("Every layer: format, bytes and error"):
    st.dataframe([{
        "layer": r["name"], "group": r["group"], "shape": "×".join(map(str, r["shape"])), "format": r["format"],
        "rank": r["rank"], "sparsity": round(r["sparsity"], 4), "bits": r["bits"],
        "original KiB": r["original_bytes"] / 1024, "compressed KiB": r["compressed_bytes"] / 1024,
        "relative error": r["relative_error"], "SQNR dB": r["sqnr_db"],
    } for r in mem["layers"]], hide_index=True, width="stretch")

# -- quality: first estimate at once, then the full protocol ---------------------------------
st.subheader("Quality against the uncompressed model")
base = state.baseline(ctx)
protocol = state.protocol(ctx)
box = st.empty()


def show(result: dict, final: bool):
    with box.container():
        if final:
            st.caption(":material/check_circle: Full protocol.")
        else:
            st.caption(f":material/hourglass_top: **First estimate — refining…** ({protocol['quick']})")
        cols = st.columns(len(base))
        for col, (name, b) in zip(cols, base.items()):
            v = result.get(name)
            if v is None:
                col.metric(name, "…", help=CONCEPTS.get(name))
                continue
            good = HIGHER_IS_BETTER.get(name, True)
            col.metric(name, f"{v:.4g}", delta=f"{v - b:+.4g} vs {b:.4g}",
                       delta_color="normal" if good else "inverse", help=CONCEPTS.get(name))


full = state.quality_if_known(ctx)
if full is None:
    show(state.quality(ctx, quick=True), final=False)
    state.mark("quick")
    full = state.quality(ctx, quick=False)
show(full, final=True)
state.mark("full")
with st.expander("How quality is measured"):
    st.json(protocol)
