"""Compare: the uncompressed and the compressed model side by side on your own input."""
import streamlit as st

from engine import data
from ui import charts, context, results

ctx = context.page(__file__)
ex, recipe = ctx.explorer, ctx.recipe
st.title("Compare")
st.caption(f"Original vs **{recipe.describe()}** on {ctx.ref}.")


def run(field: str, fn):
    """Cached per (model, recipe, input); errors become an error box (None)."""
    return context.shielded("Comparing the models", results.cached, ctx, recipe, field, fn)


@st.fragment
def causal_lm():
    prompt = st.text_area("Prompt", "The most important idea in compressing a neural network is",
                          key="compare_prompt", height=100)
    n = st.slider("New tokens", 5, 100, 40, key="compare_tokens")
    out = run(f"compare:{n}:{prompt}", lambda: ctx.work.compare(prompt, max_new_tokens=n))
    if out is None:
        return
    left, right = st.columns(2)
    left.markdown("**Original**")
    left.text(prompt + out["original"])
    right.markdown("**Compressed**")
    right.text(prompt + out["compressed"])
    st.subheader("Next-token probabilities")
    st.caption(f"The most likely next tokens under either model. KL(original ‖ compressed) = {out['kl']:.4f} nats.")
    st.plotly_chart(charts.next_tokens(out["top"]), config=charts.PNG, key="compare_tokens_chart")


@st.fragment
def seq2seq():
    source = st.text_area("Source text", "Translate English to German: The house is wonderful.",
                          key="compare_source", height=100, help="The encoder's input; both decoders write greedily.")
    n = st.slider("New tokens", 5, 100, 40, key="compare_tokens")
    out = run(f"compare:{n}:{source}", lambda: ctx.work.compare(source, max_new_tokens=n))
    if out is None:
        return
    left, right = st.columns(2)
    left.markdown("**Original**")
    left.text(out["original"])
    right.markdown("**Compressed**")
    right.text(out["compressed"])
    st.subheader("First output token")
    st.caption(f"The most likely first tokens of the output under either model. "
               f"KL(original ‖ compressed) = {out['kl']:.4f} nats.")
    st.plotly_chart(charts.next_tokens(out["top"]), config=charts.PNG, key="compare_tokens_chart")


@st.fragment
def encoder():
    texts, _ = data.polarity()
    query = st.text_input("Query", "a warm, funny and moving film", key="compare_query")
    sentences = st.text_area("Sentences to rank (one per line)", "\n".join(texts[:10]), height=220,
                             key="compare_sentences", help="Defaults: ten Pang-Lee movie-review sentences.")
    lines = [s for s in sentences.splitlines() if s.strip()]
    rows = run(f"compare:{query}\n{sentences}", lambda: ctx.work.compare(query, lines))
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
    rows = run(f"compare:{text}", lambda: ctx.work.compare(text))
    if rows is not None:
        st.plotly_chart(charts.label_probs(rows), config=charts.PNG, key="compare_labels")


{"causal-lm": causal_lm, "seq2seq": seq2seq, "encoder": encoder, "classifier": classifier}[ex.kind]()
context.mark("compare")
