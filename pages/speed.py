"""Speed: the compressed model on real kernels against the original, timed, and bounded by a roofline."""
import streamlit as st

from charts import figures
from engine.speed.measure import SpeedSettings
from ui import context, results

ctx = context.page(__file__)

st.title("Speed")
st.caption("The sidebar's recipe, run with the kernel its stored format allows in every layer (int8 and int4 "
           "weight-only matmuls, two matmuls for low rank, CSR or 2:4 where they are faster, dense where there is "
           "no kernel), beside the original in fp32 (and in bf16 where this machine has native bf16 matmuls), on "
           "this machine; each int8 and int4 kernel runs only where it measured faster here than the dense product. "
           "A Llama, Mistral or Qwen2/3 model runs on the lean path: a static cache and the layout's forward "
           "written out over the kernels, no transformers module between them; others on transformers' forward. "
           "Figures are medians over repeats after a warm-up run; other work on the machine slows them. The roofline bounds each model from its "
           "exact bytes: decode can be no faster than the bytes it reads over the memory bandwidth.")
kind = ctx.explorer.loaded.kind
with st.form("speed_form"):
    cols = st.columns(4)
    causal = kind == "causal-lm"
    prompt = cols[0].number_input("Prompt (tokens)", 1, 4096, 128, key="speed_prompt", disabled=not causal,
                                  help="Prefill: one forward pass over this many tokens of the evaluation text.")
    new = cols[1].number_input("New tokens", 1, 1024, 32, key="speed_new", disabled=not causal,
                               help="Decode: greedy steps with the key/value cache.")
    repeats = cols[2].number_input("Repeats", 1, 50, 5, key="speed_repeats", help="The median of these runs is shown.")
    dtype = cols[3].selectbox("Runtime dtype", ("auto", "bf16", "fp32"), key="speed_dtype",
                              help="The activations of the compressed model. auto: bf16 where this machine has "
                                   "native bf16 matmuls, else fp32 (emulated bf16 is slower than fp32).")
    compiled = st.checkbox("Compile the decode step (torch.compile)", False, key="speed_compile", disabled=not causal,
                           help="On the lean path (Llama, Mistral, Qwen2/3 layouts), each model's one-token step is "
                                "compiled before it is timed: faster decode. About 2 minutes a model the first time "
                                "on 2 CPU cores, seconds after (the compiled code is kept on disk); needs a C++ "
                                "compiler on the CPU.")
    go = st.form_submit_button("Measure speed", type="primary")
settings = SpeedSettings(int(prompt), int(new), 32, int(repeats), dtype, compile=bool(compiled and causal))
if not go and not results.speed_known(ctx, settings):
    st.info(f"Press **Measure speed** to time {ctx.ref} under {ctx.recipe.describe()} (about a minute on a "
            "small model on two CPU cores).")
    st.stop()
bar = st.progress(0.0, text="starting")
report = context.shielded("Measuring speed", results.speed, ctx, settings,
                          lambda i, n, what: bar.progress(i / n, text=what))
bar.empty()
if report is None:
    st.stop()
st.session_state["speed_settings"] = settings  # the Explore page's report includes it

rows = [(f"original {k}", v) for k, v in report["original"].items()] + [("compressed", report["compressed"])]
if causal:
    cols = st.columns(4)
    best = report["speedup"]
    cols[0].metric("Decode, compressed", f"{report['compressed']['decode_tokens_per_s']:,.1f} tok/s",
                   f"{best['decode_vs_fp32']:.2f}x fp32")
    cols[1].metric("Prefill, compressed", f"{report['compressed']['prefill_tokens_per_s']:,.0f} tok/s",
                   f"{best['prefill_vs_fp32']:.2f}x fp32")
    if "decode_vs_bf16" in best:
        cols[2].metric("Decode against bf16", f"{best['decode_vs_bf16']:.2f}x")
    cols[3].metric("Peak memory, compressed", figures.human_bytes(report["compressed"]["peak_memory_bytes"]))
    table = [{"model": n, "prefill tok/s": round(r["prefill_tokens_per_s"], 1),
              "decode tok/s": round(r["decode_tokens_per_s"], 1),
              "peak memory": figures.human_bytes(r["peak_memory_bytes"]),
              **({"compiled in (s)": round(r["compile_seconds"], 1)} if "compile_seconds" in r else {})}
             for n, r in rows]
else:
    table = [{"model": n, "sentences/s": round(r["sentences_per_s"], 1), "peak memory": figures.human_bytes(r["peak_memory_bytes"])}
             for n, r in rows]
anchor = report["llama_cpp"]
if anchor and anchor["installed"]:
    table.append({"model": f"llama.cpp ({anchor['file']})", "prefill tok/s": round(anchor["prefill_tokens_per_s"], 1),
                  "decode tok/s": round(anchor["decode_tokens_per_s"], 1), "peak memory": ""})
st.dataframe(table, hide_index=True, width="stretch")
if anchor and not anchor["installed"]:
    st.caption(f"llama.cpp on the model's GGUF file: {anchor['note']}.")
st.caption(f"{report['machine'].removeprefix('machine: ')}.")
st.caption(f"{report['device']}, {report['threads']} threads ({report.get('threads_why', '')}); runtime in "
           f"{report['runtime_dtype']} "
           f"({report['runtime_dtype_why']}); kernels: {report['kernel_choice']}. The runtime computes "
           f"what the workspace computes: max |difference| of the {report['max_abs_diff_of']} "
           f"{report['max_abs_diff']:.3g}, the largest |value| {report['max_abs_output']:.3g} (the rounding of "
           "activations to the runtime dtype). Peak memory: the model's tensors plus the "
           "rise of the process's memory while it runs.")

if causal:
    joined = ", ".join(f"{k} in one product in {v} blocks" for k, v in report.get("joined", {}).items() if v)
    if report["path"] == "lean":
        st.caption(f"**Path: lean** ({report['path_why']}): a static key/value cache and the layout's forward written "
                   f"out over the kernels, no transformers module between them{'; ' + joined if joined else ''}. "
                   "The originals run the same path.")
    else:
        st.caption(f"**Path: transformers' forward** ({report['path_why']}): its modules and dynamic cache around "
                   "the kernels at every step.")

st.subheader("Kernels")
st.write(", ".join(f"**{k}**: {v} layers" for k, v in report["kernels"].items()))
with st.expander("Each layer's kernel, and why"):
    st.dataframe(report["layers"], hide_index=True, width="stretch")

st.subheader("Roofline")
m = report["roofline"]["machine"]
st.caption(f"This machine: {m['bandwidth_bytes_per_s'] / 1e9:,.1f} GB/s read ({m['bandwidth_measure']}); "
           + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in m["matmul_flops_per_s"].items())
           + f" ({m['matmul_measure']}). Other devices: published figures (assets/hardware.json). A decode step "
             "reads every stored byte (scales, zero-points, masks and factors included; of the input embedding "
             "only its row) and the KV cache.")
if causal:
    st.plotly_chart(figures.roofline_bars(report), config=figures.PNG, key="roofline_chart")
    st.dataframe([{"model": n, "bytes per token": figures.human_bytes(b["decode_bytes_per_token"]),
                   "decode bound tok/s": round(b["decode_tokens_per_s"], 1),
                   "measured, share of bound": f"{b['decode_fraction_of_bound']:.0%}"
                   if "decode_fraction_of_bound" in b else "",
                   "prefill bound tok/s": round(b["prefill_tokens_per_s"]), "prefill is": b["prefill_bound"] + "-bound"}
                  for n, b in report["roofline"]["models"].items()], hide_index=True, width="stretch")
    small = [r for r in report["roofline"]["hardware"] if "memory_bytes" in r]
    if small:
        st.markdown("**Phones, boards and laptops**: the compressed model's decode bound on each (published bandwidth), "
                    "whether it fits in the device's memory with its cache, and llama.cpp's published decode there.")
        st.dataframe([{"device": r["name"], "memory": figures.human_bytes(r["memory_bytes"]),
                       "fits": "yes" if r["fits"] else "no",
                       "decode bound tok/s, compressed": round(r["compressed"]["decode_tokens_per_s"], 1),
                       "llama.cpp measured there": r["anchor"]["what"] + f" ({r['anchor']['source']})"
                       if r.get("anchor") else ""} for r in small], hide_index=True, width="stretch")
context.mark("speed")
