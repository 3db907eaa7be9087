"""Will it fit? A model's memory planned from its config alone, laid against common GPUs and this machine."""
import streamlit as st

from charts import figures
from engine.glossary import CONCEPTS
from ui import access, context, results

context.page_start(__file__)

st.title("Will it fit?")
st.caption("The model is built from its config alone, every parameter on the meta device: no weights are "
           "loaded, so a 70B model is planned on any machine. The weights' bytes under the sidebar's recipe are "
           "exact (the count a loaded model gives, byte for byte); the KV cache follows its formula; activations "
           "are an estimate.")
shipped = results.shipped_configs()
sidebar_model = st.session_state.get("ctl_model")
policy = access.for_visitors()
choices = [*shipped, results.SIDEBAR_MODEL, *([results.CONFIG_REF] if policy.typing else [])]
left, mid, right, last = st.columns([3, 1, 1, 1])
choice = left.selectbox("Model", choices, key="fit_model", index=choices.index("llama-3-8b"),
                        format_func=lambda c: f"{c} ({shipped[c]})" if c in shipped else
                        (f"the sidebar's model: {sidebar_model}" if c == results.SIDEBAR_MODEL else c),
                        help="Shipped configs of public models (no network needed), the model picked in the "
                             "sidebar, or a config.json path, a model folder or a hub id.")
ref = {results.SIDEBAR_MODEL: sidebar_model}.get(choice, choice)
if choice == results.CONFIG_REF:
    ref = st.text_input("config.json, model folder or hub id", key="fit_ref",
                        placeholder="e.g. ./my-model/config.json or Qwen/Qwen2.5-14B").strip()
    # served: the same allow-list as the sidebar's (only a config is read, so no size limit)
    ref = ref and context.shielded("Checking the model", policy.check, ref, download=False)
batch = mid.number_input("Batch", 1, 4096, 1, key="fit_batch", help="Sequences generated at once.")
tokens = right.number_input("Context (tokens)", 1, 1 << 21, 4096, step=1024, key="fit_context",
                            help="Prompt and output tokens per sequence.")
kv_bits = last.selectbox("KV cache bits", (16, 8, 4), key="fit_kv_bits", help=CONCEPTS["kv_cache"])
recipe = st.session_state.get("_recipe")
if not ref or recipe is None:
    st.info("Pick a model (and a valid recipe in the sidebar).")
    st.stop()
planned = context.shielded("Planning from the config", results.fit, ref, recipe, int(batch), int(tokens),
                           int(kv_bits))
if planned is None:
    st.stop()
fp, devices = planned

if fp["note"]:
    st.info(f"Note: {fp['note']}.")
w, kv, act = fp["weights"], fp["kv_cache"], fp["activations"]
cols = st.columns(5)
cols[0].metric("Parameters", f"{fp['total_params'] / 1e9:,.3f} B" if fp["total_params"] >= 1e8 else f"{fp['total_params']:,}")
cols[1].metric("Weights", figures.human_bytes(w["compressed_bytes"]),
               f"{w['ratio'] - 1:+.1%} vs fp16", delta_color="inverse", help=f"Under {fp['describe']}.")
cols[2].metric("KV cache", figures.human_bytes(kv["bytes"]), help=kv["formula"])
cols[3].metric("Activations (estimate)", figures.human_bytes(act["bytes"]), help=act["formula"])
cols[4].metric("Total", figures.human_bytes(fp["total_bytes"]), help="Not counted: " + fp["not_counted"])
st.caption(f"**{fp['describe']}** on {fp['model']} ({fp['source']}), {fp['kind']}. KV cache = {kv['formula']}."
           + (f" {kv['note']}." if kv.get("note") else "")
           + f" Largest layer: {fp['largest_layer']['name']} {fp['largest_layer']['shape'][0]:,} × "
             f"{fp['largest_layer']['shape'][1]:,}, {figures.human_bytes(fp['largest_layer']['fp16_bytes'])} at fp16.")
for note in fp["notes"]:
    st.warning(note)
st.plotly_chart(figures.fit_bars(fp, devices), config=figures.PNG, key="fit_chart")
st.subheader("The mildest recipe that fits")
st.caption("For each device, the first recipe of the ladder whose total fits: " + " → ".join(results.fit_ladder())
           + ". Milder first: error falls as bits rise, and GPTQ with act-order beat round to nearest at 4 and 3 "
             "bits at equal bytes (README, measured). Capacities are nominal; the driver keeps a little.")
st.dataframe([{
    "device": d["device"], "memory": figures.human_bytes(d["capacity_bytes"]),
    "this recipe": "fits" if fp["total_bytes"] <= d["capacity_bytes"] else "too big",
    "mildest ladder recipe that fits": d["recipe"] or "none: offload or more devices",
    "its total": figures.human_bytes(d["total_bytes"]) if d["total_bytes"] is not None else "",
    "to spare": figures.human_bytes(d["headroom_bytes"]) if d["headroom_bytes"] is not None else "",
} for d in devices], hide_index=True, width="stretch")
context.mark("fit")
