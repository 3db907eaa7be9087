"""Spectra: singular values of any layer, and every layer's energy at a glance."""
import streamlit as st

from charts import figures
from engine.glossary import CONCEPTS
from ui import context, results

ctx = context.page(__file__)
ex, recipe = ctx.explorer, ctx.recipe
st.title("Spectra")
st.caption(CONCEPTS["singular_value"] + " " + CONCEPTS["energy_kept"])
names = [i.name for i in ex.selected(type(recipe)())]
chosen = {i.name for i in ex.selected(recipe)}


@st.fragment
def one_layer():
    name = st.selectbox("Layer", names, key="spectra_layer", help="Any compressible layer of the model.")
    info = ex.layer(name)
    spec = context.shielded(f"The spectrum of {name}", ex.spectrum, name,
                            recipe.rank_for(info.full_rank) if name in chosen else None)
    if spec is None:  # a fragment reruns alone: its failure stays in it
        return
    rank, energy = spec["rank"], spec["energy_kept"]
    share = shares.get(name)
    shared = share is not None and len(share.group) > 1
    # its basis is shared: the spectrum of its group's stacked weights, whose top k directions it uses
    stacked = context.shielded("The stacked spectrum", ex.shared_spectrum, share) if shared else None
    if stacked is not None:
        energy = stacked["energy_kept"]
    c = st.columns(4)
    c[0].metric("Shape (out × in)", f"{info.shape[0]} × {info.shape[1]}")
    c[1].metric("Current rank" + (" (shared basis)" if shared else ""), "full (dense)" if rank is None else
                f"{share.rank if shared else rank} of {info.full_rank}", help=CONCEPTS["rank"])
    c[2].metric("Energy kept" + (" (stacked)" if stacked is not None else ""),
                "100%" if energy is None else f"{energy:.2%}", help=CONCEPTS["energy_kept"])
    c[3].metric("Break-even rank", f"{spec['break_even_rank']:.1f}", help=CONCEPTS["break_even_rank"])
    st.caption(f"Effective rank {spec['effective_rank']:.1f}; 90% of the energy needs rank "
               f"{spec['rank_for_90pct_energy']}."
               + ("" if name in chosen else " This layer is not selected by the current layer choice."))
    st.plotly_chart(figures.spectrum(spec), config=figures.PNG, key="spectra_one")
    if stacked is not None:
        others = ", ".join(n for n in share.group if n != name)
        st.caption(f"{name} shares one basis of rank {share.rank} with {others}: the spectrum of their "
                   f"stacked whitened weights ({stacked['shape'][0]} × {stacked['shape'][1]}), whose top "
                   f"{share.rank} directions they all use; the energy kept above is theirs, at that rank.")
        st.plotly_chart(figures.spectrum(stacked), config=figures.PNG, key="spectra_stacked")


def shared_groups():
    """Which layers share one basis under the recipe, and what sharing saves."""
    st.subheader("Layers that share one basis", help=CONCEPTS["share_blocks"])
    rows = context.shielded("The shared bases", ex.sharing_table, recipe)
    if not rows:
        return
    st.caption(f"Layers of one kind in {recipe.share_blocks} neighbouring blocks share one basis B (k × in), stored "
               "once; each keeps its own coefficients A_i (out × k). The basis rank k is the largest whose group "
               "stores no more values than per-layer whitened SVD at the recipe's rank r.")
    st.dataframe([{"layers": r["kind"], "blocks": ", ".join(str(b) for b in r["blocks"]),
                   "shape (out × in)": f"{r['shape'][0]} × {r['shape'][1]}", "basis rank k": r["rank"],
                   "per-layer rank r": r["per_layer_rank"],
                   "bytes saved at 16 bits": 2 * (r["per_layer_values"] - r["shared_values"]),
                   "energy kept at k (stacked)": f"{r['energy_kept']:.2%}"} for r in rows],
                 hide_index=True, width="stretch")


shares = ex.sharing(recipe) if recipe.lowrank_method == "shared" else {}
one_layer()
if shares:
    shared_groups()
context.mark("spectrum")
st.subheader("All layers: energy kept by rank", help=CONCEPTS["energy_kept"])
st.caption("Each row is a layer, each column a rank as a fraction of that layer's full rank; brighter keeps more. "
           "The dashed line is the current rank setting.")
st.plotly_chart(figures.energy_heatmap(results.energy_grid(ctx), recipe.rank_ratio), config=figures.PNG,
                key="spectra_heatmap")
