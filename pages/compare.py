"""Compare: the uncompressed and the compressed model side by side on your own input."""
import streamlit as st

from charts import figures
from engine.models import data
from ui import context, results

ctx = context.page(__file__)
ex, recipe = ctx.explorer, ctx.recipe
st.title("Compare")
st.caption(f"Original vs **{recipe.describe()}** on {ctx.ref}.")


def run(field: str, fn):
    """Cached per (model, recipe, input): `fn(the workspace holding the recipe)`; errors become an
    error box (None)."""
    return context.shielded("Comparing the models", results.cached, ctx, recipe, field, fn)


# what a generating model is given and shown: (input label, default input, widget key, help,
# whether the output continues the input, the probabilities' subheader, their caption)
GENERATING = {
    "causal-lm": ("Prompt", "The most important idea in compressing a neural network is", "compare_prompt", None,
                  True, "Next-token probabilities", "The most likely next tokens under either model."),
    "seq2seq": ("Source text", "Translate English to German: The house is wonderful.", "compare_source",
                "The encoder's input; both decoders write greedily.", False, "First output token",
                "The most likely first tokens of the output under either model."),
}


@st.fragment
def generating():
    label, default, key, help_, continues, subheader, caption = GENERATING[ex.kind]
    text = st.text_area(label, default, key=key, height=100, help=help_)
    n = st.slider("New tokens", 5, 100, 40, key="compare_tokens")
    out = run(f"compare:{n}:{text}", lambda work: work.compare(text, max_new_tokens=n))
    if out is None:
        return
    shown = text if continues else ""
    left, right = st.columns(2)
    left.markdown("**Original**")
    left.text(shown + out["original"])
    right.markdown("**Compressed**")
    right.text(shown + out["compressed"])
    st.subheader(subheader)
    st.caption(f"{caption} KL(original ‖ compressed) = {out['kl']:.4f} nats.")
    st.plotly_chart(figures.next_tokens(out["top"]), config=figures.PNG, key="compare_tokens_chart")


@st.fragment
def encoder():
    texts, _ = data.polarity()
    query = st.text_input("Query", "a warm, funny and moving film", key="compare_query")
    sentences = st.text_area("Sentences to rank (one per line)", "\n".join(texts[:10]), height=220,
                             key="compare_sentences", help="Defaults: ten Pang-Lee movie-review sentences.")
    lines = [s for s in sentences.splitlines() if s.strip()]
    rows = run(f"compare:{query}\n{sentences}", lambda work: work.compare(query, lines))
    if rows is None:
        return
    moved = sum(r["original_rank"] != r["compressed_rank"] for r in rows)
    st.caption(f"{moved} of {len(rows)} sentences change place in the ranking.")
    st.dataframe([{
        "sentence": r["sentence"], "rank (original)": r["original_rank"], "rank (compressed)": r["compressed_rank"],
        "similarity (original)": round(r["original_similarity"], 4),
        "similarity (compressed)": round(r["compressed_similarity"], 4),
    } for r in rows], hide_index=True, width="stretch")


@st.fragment
def classifier():
    text = st.text_area("Text", data.polarity()[0][0], key="compare_text")
    rows = run(f"compare:{text}", lambda work: work.compare(text))
    if rows is not None:
        st.plotly_chart(figures.label_probs(rows), config=figures.PNG, key="compare_labels")


RANK_HELP = ("One per line: export folders, GGUF files (the explorer's exports, or any GGUF file of this model's "
             "architecture and vocabulary, scored as a model of its own) or recipe JSON files"
             "; this server opens only the paths its allow-list lets through.")


def _progress_bars(names: list[str]):
    """A progress bar per candidate, and the engine's progress(k, n, name) that moves them."""
    bars = [st.progress(0.0, text=f"{name}: waiting") for name in names]

    def tell(k: int, n: int, name: str) -> None:
        for i, bar in enumerate(bars[:k - 1] if k else []):
            bar.progress(1.0, text=f"{names[i]}: done")
        if k == 0:
            for i, bar in enumerate(bars):
                bar.progress(0.0, text=f"{names[i]}: waiting for the original's outputs")
        elif k <= len(bars):
            bars[k - 1].progress(0.5, text=f"{name}: scoring against the original")
    return bars, tell


@st.fragment
def ranking():
    st.subheader("Rank candidates against the original")
    if ex.kind != "causal-lm":
        st.info(f"Ranking compares next-token distributions token by token (KL divergence from the original), "
                f"which only causal language models give (this model's kind: {ex.kind}).")
        return
    st.caption("The sidebar's recipe and any candidates you name, each scored token by token against the "
               "original (KL divergence over the whole vocabulary, as llama.cpp's), sorted by mean KL.")
    typed = st.text_area("Candidate paths", "", key="rank_paths", height=90, help=RANK_HELP,
                         placeholder="./exports/my-model-int4\n./models/my-model.Q4_K_M.gguf")
    full = st.toggle("Full protocol (16 windows; default: the quick 4)", False, key="rank_full")
    paths = results.candidate_paths(typed)
    asked = (ctx.key, recipe.to_json(), tuple(paths), full)
    if st.button("Rank candidates", key="rank_run", type="primary"):
        names = [f"sidebar: {recipe.describe()}", *paths]
        bars, tell = _progress_bars(names)
        out = context.shielded("Ranking the candidates", results.rank_candidates, ctx, paths, not full, tell)
        for bar in bars:
            bar.empty()
        st.session_state["rank_result"] = (asked, out) if out is not None else None
    held = st.session_state.get("rank_result")
    if not held or held[0] != asked:
        return
    out = held[1]
    p = out["protocol"]
    st.caption(f"{p['tokens_scored']:,} tokens in {p['windows']} windows of {p['seq_len']} of {p['text']}"
               f"{' (quick protocol)' if p['quick'] else ''}; the original's perplexity "
               f"{out['reference']['perplexity']:.4f}.")
    st.dataframe([{
        "candidate": c["name"], "bytes": c["bytes"], "bits/weight": round(c["bits_per_weight"], 3),
        "perplexity": round(c["perplexity"], 4), "KL mean": c["kl"]["mean"], "KL ± stderr": c["kl"]["mean_stderr"],
        "KL median": c["kl"]["median"], "KL p99": c["kl"]["p99"], "KL max": c["kl"]["max"],
        "same top (%)": round(100 * c["same_top"], 3), "Δp mean (%)": round(100 * c["delta_p"]["mean"], 4),
    } for c in out["candidates"]], hide_index=True, width="stretch", key="rank_table")
    st.plotly_chart(figures.candidates_kl(out["candidates"]), config=figures.PNG, key="rank_chart")


{"causal-lm": generating, "seq2seq": generating, "encoder": encoder, "classifier": classifier}[ex.kind]()
ranking()
context.mark("compare")
