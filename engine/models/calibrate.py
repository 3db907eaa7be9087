"""Calibration: real text, disjoint from the evaluation text, run once through the model.

The text is the Wikipedia sample in gensim's test data (markup removed by gensim's
`filter_wiki`); the evaluation uses other gensim files (the Lee news corpus, the Pang & Lee
sentences), so no calibration sentence is ever scored. Forward pre-hooks on every
compressible layer accumulate H = X^T X / n, the mean outer product of its inputs, from which
each method takes what it needs: Wanda diag(H), whitened SVD and GPTQ all of it. An expert of
a mixture-of-experts model sees only the tokens its router sends it (engine.layers.experts.input_hook);
an expert that receives none has no H, and its methods fall back to the plain ones.
"""
from __future__ import annotations

import bz2
import functools
import re
import time
from dataclasses import dataclass

import torch

from engine.models.data import gensim_file
from engine.models.inputs import model_inputs

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
SOURCE = f"gensim test data {WIKI_FILE} (Wikipedia articles, markup removed)"
SEQ_LEN = 128
SAMPLES = 32  # sequences of SEQ_LEN tokens: 4,096 tokens


@functools.cache
def wiki_paragraphs(limit: int = 256, min_chars: int = 200) -> tuple[str, ...]:
    """The first `limit` plain-text paragraphs of the articles (not redirects) in gensim's
    Wikipedia sample, in file order."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    out = []
    with bz2.open(gensim_file(WIKI_FILE)) as f:
        for _title, text, _pageid in extract_pages(f, filter_namespaces=("0",)):
            if text.lstrip().lower().startswith("#redirect"):
                continue
            for para in filter_wiki(text).split("\n"):
                para = re.sub(r"\s+", " ", re.sub(r"'{2,}", "", para)).strip()
                if len(para) >= min_chars and not para.startswith(("|", "!", "{", "*")):
                    out.append(para)
                    if len(out) == limit:
                        return tuple(out)
    return tuple(out)


@dataclass(frozen=True)
class Calibration:
    """Input statistics of every compressible layer of one model."""

    source: str
    samples: int
    tokens: int
    seconds: float
    hessians: dict  # layer name -> H = X^T X / n, (in, in) float32

    def describe(self) -> str:
        return f"{self.samples} sequences, {self.tokens:,} tokens of {self.source}"

    def to_dict(self) -> dict:
        return {"source": self.source, "samples": self.samples, "tokens": self.tokens,
                "seconds": round(self.seconds, 3), "layers": len(self.hessians)}


def sequences(tokenizer, samples: int = SAMPLES, seq_len: int = SEQ_LEN, paragraphs=None) -> list[list[int]]:
    """`samples` token sequences: the first `seq_len` tokens of successive paragraphs (each
    paragraph its own sequence, so no padding is ever seen; those under half of `seq_len` left
    out), of the calibration text or of `paragraphs`."""
    out = []
    for para in wiki_paragraphs() if paragraphs is None else paragraphs:
        ids = tokenizer(para, truncation=True, max_length=seq_len)["input_ids"]
        if len(ids) >= seq_len // 2:
            out.append(ids)
        if len(out) == samples:
            break
    return out


def targets(model, layers) -> tuple[dict, dict]:
    """Where to hook for the statistics of `layers` (LayerInfo): (name -> module, for the layers
    that are modules of their own; experts module path -> (module, names of its expert layers))."""
    from engine.layers.experts import experts_modules

    modules, experts = {}, {}
    names = [i.name for i in layers if i.index is not None]
    for path, module in experts_modules(model, names).items():
        experts[path] = (module, {n for n in names if n.rsplit(".", 2)[0] == path})
    for i in layers:
        if i.index is None:
            modules[i.name] = model.get_submodule(i.name)
    return modules, experts


@torch.no_grad()
def collect(model, tokenizer, modules: dict, samples: int = SAMPLES, seq_len: int = SEQ_LEN,
            device=None, experts: dict | None = None) -> Calibration:
    """Run the calibration sequences through `model` (one at a time) with a forward pre-hook on
    each module of `modules` (name -> nn.Linear, Conv1D or router), accumulating H per layer,
    and on each experts module of `experts` (see `targets`), accumulating H per expert matrix
    from the tokens routed to it. The inputs go to `device` (default: that of the model's
    first parameter). An encoder-decoder reads each sequence's first half in its encoder and
    the second half teacher-forced in its decoder (engine.models.inputs.model_inputs), so the layers
    of both stacks see real text."""
    from engine.layers.experts import input_hook

    t0 = time.perf_counter()
    sums, counts, handles = {}, {}, []

    def accumulate(name, x):
        x = x.detach().reshape(-1, x.shape[-1]).float()  # (tokens, in)
        sums[name] = sums.get(name, 0) + x.T @ x
        counts[name] = counts.get(name, 0) + x.shape[0]

    def hook(name):
        return lambda _module, args: accumulate(name, args[0])

    for name, module in modules.items():
        handles.append(module.register_forward_pre_hook(hook(name)))
    for path, (module, wanted) in (experts or {}).items():
        handles.append(module.register_forward_pre_hook(input_hook(path, wanted, accumulate), with_kwargs=True))
    device = device or next(model.parameters()).device
    seqs = sequences(tokenizer, samples, seq_len)
    try:
        for ids in seqs:
            model(**model_inputs(model, torch.tensor([ids], device=device)))
    finally:
        for h in handles:
            h.remove()
    hessians = {name: (sums[name] / counts[name]).float() for name in sums}
    return Calibration(SOURCE, len(seqs), sum(len(s) for s in seqs), time.perf_counter() - t0, hessians)


@torch.no_grad()
def block_influence(model, tokenizer, blocks, samples: int = SAMPLES, seq_len: int = SEQ_LEN) -> list[float]:
    """Per module of `blocks` (a model's transformer blocks, in order), ShortGPT's block
    influence on the calibration sequences: 1 - the mean over every token of cos(input, output)
    of its hidden states (engine.structure.importance.block_influence over all the tokens at
    once), accumulated by forward hooks as a sum of cosines and a count."""
    sums, counts = [0.0] * len(blocks), [0] * len(blocks)

    def hook(k):
        def record(_module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)  # (batch, tokens)
            sums[k] += cos.sum().item()
            counts[k] += cos.numel()
        return record

    handles = [b.register_forward_hook(hook(k), with_kwargs=True) for k, b in enumerate(blocks)]
    device = next(model.parameters()).device
    try:
        for ids in sequences(tokenizer, samples, seq_len):
            model(**model_inputs(model, torch.tensor([ids], device=device)))
    finally:
        for h in handles:
            h.remove()
    return [1 - s / n for s, n in zip(sums, counts)]
