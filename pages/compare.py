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


{"causal-lm": generating, "seq2seq": generating, "encoder": encoder, "classifier": classifier}[ex.kind]()
context.mark("compare")
