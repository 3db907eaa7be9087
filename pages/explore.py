"""Explore: memory, per-layer error and quality after each change of the controls."""
import streamlit as st

from charts import figures
from engine.drivers.distill import BATCH, OBJECTIVES, SAMPLES
from engine.glossary import CONCEPTS, HIGHER_IS_BETTER, METRIC_NAMES, metric_name, with_metric_names
from engine.models.calibrate import SOURCE
from engine.drivers.schedule import shares
from engine.structure.removal import describe
from ui import caches, context, exports, results

LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]

ctx = context.page(__file__)
ex, recipe = ctx.explorer, ctx.recipe

st.title("Explore")
st.caption(f"**{ctx.ref}** · {ex.kind} · {ex.total_params:,} parameters · {ex.loaded.device} · "
           f"recipe: **{recipe.describe()}**")
if recipe.calibrated:
    st.caption(f"Calibration ({CONCEPTS['calibration']}): {ex.calibration().describe()}.")
    fallback = ex.uncalibrated(recipe)
    if fallback:
        st.caption(f"{len(fallback)} layers (experts the calibration text never reached) use the plain "
                   "method instead.")
ranks = ex.ranks_for(recipe)
if not ranks:
    st.warning("The layer choice selects no layer: nothing is compressed.")
elif recipe.rank_ratio is not None or recipe.rank is not None:
    st.caption("Low rank: " + "; ".join(
        f"{r['layers']} layers of full rank {r['full_rank']} → rank {r['rank'] or r['full_rank']}"
        + ("" if r["rank"] else " (dense)") for r in ranks))

# -- memory, byte for byte -----------------------------------------------------------------
mem = results.memory(ctx)
context.mark("memory")
c1, c2, c3 = st.columns(3)
c1.metric("Original (fp16)", figures.human_bytes(mem["original_bytes"]),
          help=f"Every parameter at 2 bytes; {figures.human_bytes(mem['original_bytes_fp32'])} at fp32.")
saved = mem["compressed_bytes"] - mem["original_bytes"]
c2.metric("Compressed", figures.human_bytes(mem["compressed_bytes"]),  # no arrow while nothing is compressed
          delta=figures.human_bytes(saved) if saved else None, delta_color="inverse",
          help="Exactly what would be stored: packed values, fp16 scales, zero-points, masks or indices, "
               "factors, and everything left alone at 2 bytes per parameter.")
c3.metric("Ratio", f"{mem['ratio']:.3f}", help="compressed bytes / original bytes (fp16)")
if mem.get("structure"):
    line = describe(mem["structure"])
    st.caption(line[0].upper() + line[1:] + ". " + CONCEPTS["structure_importance"])
st.plotly_chart(figures.memory_bar(mem), config=figures.PNG, key="explore_memory")
over = [r["name"] for r in mem["layers"] if r["factors_exceed_dense"]]
if over:
    st.warning(f"{len(over)} layer(s) store factors larger than the dense matrix at this rank "
               f"(above the break-even rank): {', '.join(over[:4])}{'…' if len(over) > 4 else ''}. "
               + CONCEPTS["break_even_rank"])

# -- per-layer error -----------------------------------------------------------------------
st.subheader("Per-layer error", help=CONCEPTS["relative_error"] + " " + CONCEPTS["sqnr_db"])
if any(r["compressed"] for r in mem["layers"]):
    st.plotly_chart(figures.layer_errors(mem["layers"]), config=figures.PNG, key="explore_errors")
    if not any(r["bits"] < 16 or r["rank"] or r["sparsity"] for r in mem["layers"] if r["compressed"]):
        st.caption("Nothing is compressed yet: these errors are only each weight's rounding to fp16, the baseline "
                   "every figure compares with. Move a control in the sidebar to see them grow.")
context.mark("layer_errors")
with st.expander("Every layer: format, bytes and error"):
    st.dataframe([{
        "layer": r["name"], "group": r["group"], "shape": "×".join(map(str, r["shape"])), "format": r["format"],
        "rank": r["rank"], "sparsity": round(r["sparsity"], 4), "bits": r["bits"],
        "original KiB": r["original_bytes"] / 1024, "compressed KiB": r["compressed_bytes"] / 1024,
        "relative error": r["relative_error"], "SQNR dB": r["sqnr_db"],
    } for r in mem["layers"]], hide_index=True, width="stretch")

# -- quality: first estimate at once, then the full protocol ---------------------------------
st.subheader("Quality against the uncompressed model")
base = results.baseline(ctx)
protocol = results.protocol(ctx)
box = st.empty()


def show(result: dict, final: bool):
    with box.container():
        if final:
            st.caption(":material/check_circle: Full protocol.")
        else:
            st.caption(":material/hourglass_top: **First estimate — refining…** "
                       f"({with_metric_names(protocol['quick'])})")
        per_row = min(4, len(base))  # rows of at most four tiles, so that each name fits
        cols = [c for start in range(0, len(base), per_row) for c in st.columns(per_row)]
        for col, (name, b) in zip(cols, base.items()):
            v = result.get(name)
            if v is None:
                col.metric(metric_name(name), "…", help=CONCEPTS.get(name))
                continue
            good = HIGHER_IS_BETTER.get(name, True)
            low, high = result.get(name + "_low"), result.get(name + "_high")
            sure = f"95%: {low:,.4g} to {high:,.4g}" if low is not None else None
            same = f"{v:.4g}" == f"{b:.4g}"  # a difference below the digits shown is no change
            col.metric(metric_name(name), f"{v:.4g}", delta_description=sure,  # the interval beside, not cut off
                       delta=f"same as the original ({b:.4g})" if same else f"{v - b:+.4g} vs {b:.4g}",
                       delta_color="off" if same else "normal" if good else "inverse",
                       delta_arrow="off" if same else "auto", help=CONCEPTS.get(name))


full = results.quality_if_known(ctx)
if full is None:
    show(results.quality(ctx, quick=True), final=False)
    context.mark("quick")
    full = results.quality(ctx, quick=False)
show(full, final=True)
context.mark("full")
with st.expander("How quality is measured"):
    st.markdown("\n".join(f"- **{metric_name(k) if k in METRIC_NAMES else k.replace('_', ' ').capitalize()}**: "
                          f"{with_metric_names(str(v))}" for k, v in protocol.items()))
timed = st.session_state.get("speed_settings")
name, build = exports.report(ctx, mem, full, True, base, protocol,
                             results.speed(ctx, timed) if timed and results.speed_known(ctx, timed) else None,
                             st.session_state.get("sweeps", {}).get(ctx.key))
st.download_button("Download report (HTML)", build, name, "text/html", key="explore_report", icon=":material/summarize:",
                   help="One self-contained HTML file for the people who decide: the model, the recipe, memory, "
                        "quality with its protocol and baseline, speed where measured on the Speed page, the "
                        "trade-off chart where a sweep was run, the versions and the date. Opens offline; prints "
                        "to PDF.")

# -- the export: the bytes as stored ----------------------------------------------------------
st.subheader("Export: the bytes as stored")
st.caption("A folder with model.safetensors (b-bit codes packed, fp16 scales, masks and indices: the tensor bytes "
           "equal the Compressed figure above, or are fewer when Huffman-coded), the recipe, the config and a "
           "manifest with every file's size and SHA-256. Unzip it and give the folder in the sidebar (Hub id or local folder) or to "
           "`python -m engine run FOLDER` to load it back and score it.")
entropy = st.checkbox("Huffman-code the values", key="explore_entropy", disabled=context.holds_export(ctx),
                      help="Deep Compression's last stage: each matrix's b-bit codes get a Huffman code built "
                           "from their own counts, where that takes fewer bytes. Decoded exactly on reload.")


def build_and_offer(what: str, key: str, state: str, build, option, mime: str, disabled: bool = False,
                    after: str = "") -> None:
    """A button that builds a file of the current recipe (`build(ctx, option)` -> (name, data,
    what is in it)), then its download, kept while the model, recipe and option stay."""
    if st.button(f"Build the {what}", key=key, disabled=disabled):
        with st.spinner(f"Writing the {what}…"):
            made = context.shielded(f"Building the {what}", build, ctx, option)
        if made is not None:
            caches.keep_built(state, (ctx.key, recipe, option, *made))
    made = st.session_state.get(state)
    if made and made[:3] == (ctx.key, recipe, option):
        st.download_button(f"Download {made[3]} ({figures.human_bytes(len(made[4]))})", made[4], made[3], mime,
                           key=key + "_download")
        st.caption(f"In it: {made[5]}.{after}")


def offer_format(title: str, key: str, summary, build, mime: str, after: str) -> None:
    """A shipped format's section: what it would hold of the recipe, the fallback, the file."""
    st.markdown(title)
    info = None if context.holds_export(ctx) else context.shielded(f"Checking {title}", summary, ctx)
    if info is not None and not info["supported"]:
        st.caption(f"Not for this model: {info['why']}.")
        return
    if info is None:
        return
    layers, kinds = info["layers"], {}
    for row in layers:
        kinds[row["type"]] = kinds.get(row["type"], 0) + 1
    refused = next((r for r in layers if r["type"] == "refused"), None)
    held = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()) if k != "refused")
    st.caption(f"{len(layers) - info['refused']} of {len(layers)} compressed layers go in as they are"
               + (f" ({held}), {figures.human_bytes(info['bytes'])} of them" if held else "")
               + (f"; {info['refused']} cannot, e.g. {refused['layer']}: {refused['how']}; the dense fallback writes "
                  "them dense" if refused else "") + ".")
    dense = st.checkbox("Dense fallback for what it cannot hold", key=key + "_dense", disabled=not info["refused"])
    build_and_offer(title.split("**")[1], key, key + "_made", build, dense, mime,
                    disabled=bool(info["refused"]) and not dense, after=after)


build_and_offer("export (zip)", "explore_export", "export_zip", exports.export_zip, entropy, "application/zip")

offer_format("**GGUF file** for llama.cpp (and transformers' `gguf_file=`)", "explore_gguf", exports.gguf_summary,
             exports.export_gguf, "application/octet-stream",
             " Run it with `llama-cli -m FILE`, or score it here with `python -m engine run FILE`.")
offer_format("**compressed-tensors folder** for transformers and vLLM", "explore_ct", exports.ct_summary,
             exports.export_ct, "application/zip",
             " Unzipped: `AutoModelForCausalLM.from_pretrained(FOLDER)` (with compressed-tensors), `vllm serve FOLDER`.")


# -- recovery by distillation ----------------------------------------------------------------
st.subheader("Recover by distillation", help=CONCEPTS["distillation"])
if context.holds_export(ctx):
    st.caption("These are the export's stored values. Distillation starts from a recipe compressed here: "
               "move a control, or pick the source model.")
    st.stop()
if not ranks:
    st.caption("Nothing is compressed: nothing to recover.")
    st.stop()
if any(r.number_format != "int" for r in (ctx.recipe, *ctx.recipe.rule_recipes())):
    st.caption("Distillation keeps the values on the explorer's own grids: a recipe in llama.cpp's formats "
               "or the float formats is not distilled here.")
    st.stop()
c1, c2, c3 = st.columns([1, 1, 1], vertical_alignment="bottom")
steps = c1.number_input("Steps", 1, 2000, 32, key="explore_distill_steps",
                        help="Each step trains on 4 calibration sequences (about 500 tokens).")
lr = c2.select_slider("Learning rate", LEARNING_RATES, value=1e-4, key="explore_distill_lr",
                      format_func=lambda v: f"{v:g}")
run = c3.button("Distil", key="explore_distill", type="primary", width="stretch")
st.caption(f"Trains the compressed layers to match the original model on {SAMPLES} paragraphs of the calibration "
           f"text ({SOURCE}), {BATCH} per step; objective: {OBJECTIVES[ex.kind]}. Masks, ranks and grids are kept: "
           "the bytes do not change. On a CPU a step of a 135M-parameter model takes seconds.")
distilled, result = (context.shielded("Distillation", results.distilled, ctx, int(steps), float(lr), run)
                     or (None, None))
if result is not None:
    d = result["distillation"]
    rows = [{"metric": metric_name(k), "baseline": b, "compressed": full.get(k), "distilled": result["full"].get(k)}
            for k, b in base.items()]
    st.caption(f"{d['steps']} steps at learning rate {d['lr']:g}: {d['seconds']:.1f} s. "
               f"Loss {d['loss_first']:.4f} → {d['loss_last']:.4f}. Memory unchanged: "
               f"{figures.human_bytes(result['memory']['compressed_bytes'])}. Full protocol on the evaluation text.")
    st.dataframe(rows, hide_index=True, width="stretch")
    st.plotly_chart(figures.distill_loss(d["loss"], d["objective"]), config=figures.PNG, key="explore_distill_loss")
    st.download_button("Download the distilled recipe (JSON)", distilled.to_json(), "recipe.json",
                       "application/json", key="explore_distill_recipe")


# -- a gradual schedule -------------------------------------------------------------------------
st.subheader("Gradual schedule", help=CONCEPTS["schedule"])
if not (ctx.recipe.sparsity > 0 or ctx.recipe.structured) or ctx.recipe.per_layer:
    st.caption("Prune (sparsity, a pattern, or heads, channels and blocks) without per-layer rules to reach it in "
               "steps instead of at once.")
    st.stop()
c1, c2, c3 = st.columns([1, 1, 1], vertical_alignment="bottom")
n_steps = c1.number_input("Steps of the schedule", 2, 16, 4, key="explore_sched_steps")
between = c2.number_input("Distillation steps after each", 0, 2000, 8, key="explore_sched_distill")
run_schedule = c3.button("Run the schedule", key="explore_schedule", width="stretch")
gradual, done = context.shielded("The gradual schedule", results.scheduled, ctx, int(n_steps), int(between),
                                 run_schedule) or (None, None)
primary = next(iter(base))
st.plotly_chart(figures.schedule(shares(int(n_steps)), done and done["steps"], primary if done else None,
                                 full.get(primary)), config=figures.PNG, key="explore_schedule_chart")
st.caption(f"{CONCEPTS['schedule']} Each step's quality is a first estimate; the last step is then scored "
           "with the full protocol, beside the recipe pruned at once (the dashed line).")
if done is not None:
    st.dataframe([{"step": s["step"], "share of the target": f"{s['share']:.1%}", "recipe": s["recipe"],
                   "compressed": figures.human_bytes(s["compressed_bytes"]), metric_name(primary): s["metrics"][primary]}
                  for s in done["steps"]], hide_index=True, width="stretch")
    st.dataframe([{"metric": metric_name(k), "baseline": b, "at once": full.get(k), "gradual": done["full"].get(k)}
                  for k, b in base.items()], hide_index=True, width="stretch")
    st.download_button("Download the gradual recipe (JSON)", gradual.to_json(), "recipe.json", "application/json",
                       key="explore_schedule_download")
