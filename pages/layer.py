"""Inside a layer: what the current recipe does to one layer's real numbers, transform by transform."""
import streamlit as st

from charts import lesson as lesson_figures
from engine.glossary import CONCEPTS, FORMULAS
from engine.studies import inside_layer as lesson
from ui import context

PNG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}

ctx = context.page(__file__)
ex, recipe = ctx.explorer, ctx.recipe
st.title("Inside a layer")
st.caption(f"What **{recipe.describe()}** does to one layer of **{ctx.ref}**: every picture is computed from the "
           "layer's real values, against the fp16 weights every figure in the explorer compares with. "
           "Move the controls in the sidebar and watch the numbers move.")
names = [i.name for i in ex.selected(recipe)]
if not names:
    st.info("The layer choice selects no layer: nothing is compressed. Pick a layer group in the sidebar.")
    st.stop()
if context.shielded("Applying the recipe", ctx.work.ensure, recipe) is None:
    st.stop()
name = st.selectbox("Layer", names, key="layer_name", help="Any layer the current recipe compresses.")
info = ex.layer(name)
st.caption(f"{info.shape[0]} × {info.shape[1]} (out × in), {info.params:,} weights; this layer's recipe: "
           f"**{ctx.work.stored[name].recipe.describe()}**.")


def explain(concepts: list[str], formula: str | None) -> None:
    for c in concepts:
        st.markdown(CONCEPTS[c])
    if formula:
        st.latex(FORMULAS[formula])


def lesson_of(fn, **kw):
    out = context.shielded(f"Reading {name}", fn, ctx.work, name, **kw)
    if out is None:
        st.stop()
    if not out["applies"]:
        st.info(out["why"] + ".")
        return None
    return out


tabs = st.tabs(["Quantization", "Low rank", "Pruning", "Weight sharing", "Entropy coding"])
with tabs[0]:
    q = lesson_of(lesson.quantization)
    if q is not None:
        group = st.number_input(f"Group (0 to {q['groups'] - 1}; the largest scale by default)", 0,
                                q["groups"] - 1, q["group"], key="layer_group")
        if group != q["group"]:
            q = lesson_of(lesson.quantization, group=int(group))
        left, right = st.columns([3, 2])
        with left:
            st.plotly_chart(lesson_figures.group_on_grid(q), config=PNG, key="lesson_grid")
            st.caption(f"Group {q['group']} of {q['groups']} (row {q['row']} of {q['matrix']}): scale "
                       f"{q['scale']:.3g}" + ("" if q["symmetric"] else f", zero-point {q['zero']:.0f}")
                       + f". Every value after rounding sits on one of the {len(q['levels'])} levels of the grid."
                       + (" AWQ: the weights shown are each times its input column's scale, as the grid holds "
                          "them." if q.get("channel_scaled") else ""))
        with right:
            explain(["bits", "scale", "symmetric"], "symmetric" if q["symmetric"] else "asymmetric")
        left, right = st.columns(2)
        with left:
            st.plotly_chart(lesson_figures.error_histogram(q), config=PNG, key="lesson_error")
            st.caption(f"The rounding error of every stored weight of {q['matrix']}; round to nearest never "
                       f"errs by more than half a step (dashed: half the largest step, {q['half_step_max']:.3g}). "
                       f"Largest error here: {q['max_error']:.3g}.")
        with right:
            pooled = f" (each row is the largest of {q['pooled_rows']} rows)" if q["pooled_rows"] > 1 else ""
            st.plotly_chart(lesson_figures.heatmap(q["scales"], "Scale of every group", "group within the row",
                                           "output row" + pooled, "scale"), config=PNG, key="lesson_scales")
            st.caption("A bright cell is a group whose largest weight, an outlier, stretches its scale: "
                       "every other weight of that group then gets coarser steps. " + CONCEPTS["group_size"])
        if q["zeros"] is not None:
            st.plotly_chart(lesson_figures.heatmap(q["zeros"], "Zero-point of every group", "group within the row",
                                           "output row" + pooled, "zero-point (code)", "Cividis"),
                            config=PNG, key="lesson_zeros")
with tabs[1]:
    r = lesson_of(lesson.low_rank)
    if r is not None:
        c = st.columns(3)
        crop = r["crop"]
        for col, key, title in zip(c, ("original", "approx", "difference"),
                                   ("W (fp16)", f"rank {r['rank']}, as stored", "W − rank-r")):
            col.plotly_chart(lesson_figures.heatmap(r[key], title, "input column", "output row", "weight", "RdBu",
                                            symmetric=True, height=320), config=PNG, key=f"lesson_{key}")
        st.caption(f"The top-left {crop} × {crop} values of the {r['shape'][0]} × {r['shape'][1]} matrix, one colour "
                   f"scale each (red negative, blue positive). Relative error of the whole matrix: "
                   f"{r['relative_error']:.3f}.")
        left, right = st.columns([3, 2])
        with left:
            st.plotly_chart(lesson_figures.spectrum_cut(r["singular_values"], r["rank"]), config=PNG, key="lesson_spectrum")
        with right:
            explain(["low_rank", "singular_value"], "low_rank")
            st.metric("Values stored", f"{r['factor_params']:,}",
                      f"{r['factor_params'] / r['dense_params'] - 1:+.0%} against {r['dense_params']:,} dense",
                      delta_color="inverse", help=CONCEPTS["break_even_rank"])
with tabs[2]:
    p = lesson_of(lesson.pruning)
    if p is not None:
        left, right = st.columns(2)
        with left:
            st.plotly_chart(lesson_figures.heatmap(p["mask"], f"Keep-mask of {p['matrix']} ({p['pattern']}, {p['method']})",
                                           "input column", "output row", "kept", "Greens", height=360),
                            config=PNG, key="lesson_mask")
            st.caption(f"The top-left {p['crop']} × {p['crop']} entries: green kept, white removed "
                       f"({p['sparsity']:.0%} removed in the whole matrix).")
        with right:
            st.plotly_chart(lesson_figures.magnitudes(p), config=PNG, key="lesson_magnitudes")
            st.caption("Magnitudes of the weights kept and removed" + (
                f"; magnitude pruning removes every weight below {p['threshold']:.3g} (dashed)."
                if p["method"] == "magnitude" and p["pattern"] == "unstructured" else
                ": a pattern or a calibrated method keeps some small weights and removes some large ones."))
        explain(["sparsity"] + (["nm"] if p["pattern"] != "unstructured" else []) + ["prune_method"],
                p["method"] if p["method"] in ("magnitude", "sparsegpt") else "wanda")
        if "differs_from_magnitude" in p:
            st.plotly_chart(lesson_figures.heatmap(p["magnitude_mask"], "Magnitude's mask at the same count",
                                           "input column", "output row", "kept", "Greens", height=360),
                            config=PNG, key="lesson_magnitude_mask")
            st.caption(f"{p['method']} and magnitude disagree on {p['differs_from_magnitude']:.1%} of the entries: "
                       "those are the weights whose inputs make them matter more (or less) than their size says.")
def beside(fig, key: str, concepts: list[str], formula: str):
    """The picture on the left, its words and formula on the right; returns the right column."""
    left, right = st.columns([3, 2])
    left.plotly_chart(fig, config=PNG, key=key)
    with right:
        explain(concepts, formula)
    return right


with tabs[3]:
    s = lesson_of(lesson.sharing)
    if s is not None:
        beside(lesson_figures.codebook(s), "lesson_codebook", ["weight_sharing"], "kmeans").caption(
            f"{len(s['codebook'])} shared values stand for {sum(s['counts']):,} weights; the busiest one for "
            f"{max(s['counts']):,}.")
with tabs[4]:
    e = lesson_of(lesson.entropy)
    if e is not None:
        with beside(lesson_figures.code_lengths(e), "lesson_huffman", ["entropy_coding"], "entropy"):
            c = st.columns(3)
            c[0].metric("Entropy", f"{e['entropy']:.2f} bits")
            c[1].metric("Huffman", f"{e['huffman']:.2f} bits")
            c[2].metric("Fixed width", f"{e['fixed']} bits")
            st.caption(f"Per stored value, over the {e['values']:,} values {name} stores. The export's entropy "
                       "coding (`--entropy`) stores this layer's codes this way where that is smaller.")
context.mark("layer")
