"""Spectra: singular values of any layer, and every layer's energy at a glance."""
import streamlit as st

from engine.glossary import CONCEPTS
from ui import charts, context, results

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
    c = st.columns(4)
    c[0].metric("Shape (out × in)", f"{info.shape[0]} × {info.shape[1]}")
    c[1].metric("Current rank", "full (dense)" if rank is None else f"{rank} of {info.full_rank}",
                help=CONCEPTS["rank"])
    c[2].metric("Energy kept", "100%" if energy is None else f"{energy:.2%}", help=CONCEPTS["energy_kept"])
    c[3].metric("Break-even rank", f"{spec['break_even_rank']:.1f}", help=CONCEPTS["break_even_rank"])
    st.caption(f"Effective rank {spec['effective_rank']:.1f}; 90% of the energy needs rank "
               f"{spec['rank_for_90pct_energy']}."
               + ("" if name in chosen else " This layer is not selected by the current layer choice."))
    st.plotly_chart(charts.spectrum(spec), config=charts.PNG, key="spectra_one")


one_layer()
context.mark("spectrum")
st.subheader("All layers: energy kept by rank", help=CONCEPTS["energy_kept"])
st.caption("Each row is a layer, each column a rank as a fraction of that layer's full rank; brighter keeps more. "
           "The dashed line is the current rank setting.")
st.plotly_chart(charts.energy_heatmap(results.energy_grid(ctx), recipe.rank_ratio), config=charts.PNG,
                key="spectra_heatmap")
