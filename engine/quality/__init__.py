"""Quality against the uncompressed model, on real data nobody here wrote: one module per model kind.

An evaluator is built once per model from the original (reference outputs are computed
then and kept), and then scores any compressed copy. `quick=True` gives the first estimate
the app shows after a change, on a small fixed slice stated in its protocol; `quick=False`
runs the full protocol.

    causal     causal language models (CausalLMEval)
    encoder    encoders and classifiers (EncoderEval, ClassifierEval)
    seq2seq    encoder-decoder models (Seq2SeqEval)
    stats      the intervals and scores they share
    divergence llama.cpp's KL statistics of a candidate against a reference, token by token
    causal_reference  a causal reference's outputs kept small, candidates scored against them
    compare    the original and a compressed model side by side, on the user's own input
"""
from __future__ import annotations

from engine.quality.causal import CausalLMEval
from engine.quality.encoder import ClassifierEval, EncoderEval
from engine.quality.seq2seq import Seq2SeqEval

# a model's kind (engine.models.loading) -> the evaluator of its quality protocol
EVALUATORS = {"causal-lm": CausalLMEval, "encoder": EncoderEval, "classifier": ClassifierEval,
              "seq2seq": Seq2SeqEval}


def make_evaluator(loaded, eval_text: str | None = None, eval_name: str | None = None):
    """The evaluator of a loaded model's kind, its references computed from the original now."""
    return EVALUATORS[loaded.kind](loaded, eval_text, eval_name)
