"""Quality against the uncompressed model, on real data nobody here wrote.

An evaluator is built once per model from the original (reference outputs are computed
then and kept), and then scores any compressed copy. `quick=True` gives the first estimate
the app shows after a change, on a small fixed slice stated in its protocol; `quick=False`
runs the full protocol.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from engine.models import data
from engine.errors import UserError

SEQ_LEN = 256  # causal LM window, BOS included
FULL_WINDOWS = 16
QUICK_WINDOWS = 4  # the first estimate: this many of the full windows, evenly spaced
ENCODER_MAX_TOKENS = 256
QUICK_SENTENCES = 16
BATCH = 4
TOKEN_BUDGET = 4096
INTERVAL_NOTE = ("with a 95% interval for the full figure (`<metric>_low`, `<metric>_high`): Student's t over "
                 "the estimate's items, with the finite-population correction, the items taken as if drawn at random")
TOKEN_CHUNK = 256  # causal LM: scored tokens whose vocabulary-wide log-probabilities are held at once


def make_evaluator(loaded, eval_text: str | None = None, eval_name: str | None = None):
    if loaded.kind == "seq2seq":
        from engine.quality.seq2seq import Seq2SeqEval

        return Seq2SeqEval(loaded, eval_text, eval_name)
    cls = {"causal-lm": CausalLMEval, "encoder": EncoderEval, "classifier": ClassifierEval}[loaded.kind]
    return cls(loaded, eval_text, eval_name)


def interval95(sample: torch.Tensor, population: int) -> tuple[float, float]:
    """A 95% interval for the mean over `population` items from `sample`, k of them (each item's
    value: a window's mean log-likelihood, a sentence's cosine). Student's t with k - 1 degrees
    of freedom, and the finite-population correction 1 - k/N, since the sample is part of the
    items the full figure averages. The sample is taken as if drawn at random (the first
    estimate's items are evenly spaced over the text)."""
    from scipy.stats import t

    k = sample.numel()
    mean = sample.float().mean().item()
    if k < 2 or k >= population:
        return mean, mean
    half = t.ppf(0.975, k - 1) * sample.float().std().item() * math.sqrt((1 - k / population) / k)
    return mean - half, mean + half


def ratio_interval(log_ratio: torch.Tensor, base_ppl: float, windows: int) -> dict:
    """The first estimate's perplexity interval: the full figure is base_ppl x exp(the mean over
    all windows of each window's log-likelihood change), estimated from `log_ratio`, the change
    on the estimate's windows."""
    lo, hi = interval95(log_ratio, windows)
    return bounds("perplexity", base_ppl * math.exp(lo), base_ppl * math.exp(hi))


def bounds(metric: str, lo: float, hi: float) -> dict:
    """A first estimate's 95% interval, as two flat fields (a sweep writes them as columns)."""
    return {f"{metric}_low": lo, f"{metric}_high": hi}


def token_scores(logp, ref_logp, ref_top1, targets):
    """Per scored token of next-token predictions: (negative log-likelihood of the target,
    KL(original || compressed) in nats, whether both models' most likely token agree), each
    (batch, positions), from log-probabilities (batch, positions, vocab) of the compressed
    model `logp` and the original `ref_logp`, the original's top tokens and the targets."""
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return nll, kl, logp.argmax(-1) == ref_top1


# ---------------------------------------------------------------------------------------
# Causal LM
# ---------------------------------------------------------------------------------------


class CausalLMEval:
    """Perplexity on held-out text, KL from the original and top-1 next-token agreement.

    The log-probabilities over the vocabulary are worked on `chunk` scored tokens at a time
    (each window's rows in pieces, from one forward pass of BATCH windows), so the peak memory
    of an evaluation is one batch's logits and a few (chunk, vocabulary) tensors, whatever the
    number of windows: on SmolLM2 (49,152 tokens) 4,080 scored tokens at once took about
    5 GiB. Every token's values are computed exactly as they would be all at once."""

    primary = "perplexity"

    def __init__(self, loaded, eval_text=None, eval_name=None, chunk: int = TOKEN_CHUNK):
        tok = loaded.tokenizer
        self.device = loaded.device
        self.chunk = chunk
        if eval_text is None:
            eval_text = "\n\n".join(data.lee_background())
            eval_name = "gensim lee_background.cor (300 news articles, Lee et al. 2005)"
        ids = tok(eval_text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        bos = tok.bos_token_id
        body = SEQ_LEN - (bos is not None)
        n_avail = len(ids) // body
        if n_avail < 1:
            raise UserError(
                f"--eval-text: {eval_name} has {len(ids)} tokens, too short for one window of {body} tokens"
            )
        picks = np.linspace(0, n_avail - 1, min(FULL_WINDOWS, n_avail)).round().astype(int)
        windows = [ids[i * body:(i + 1) * body] for i in dict.fromkeys(picks.tolist())]
        if bos is not None:
            windows = [[bos] + w for w in windows]
        self.windows = torch.tensor(windows, device=self.device)
        n = len(windows)
        self.quick_idx = list(dict.fromkeys(np.linspace(0, n - 1, min(QUICK_WINDOWS, n)).round().astype(int).tolist()))
        # reference: the original model's next-token log-probabilities, stored as fp16
        self.ref_logp = self.ref_top1 = None
        nll = torch.empty(self.windows.shape[0], self.windows.shape[1] - 1, device=self.device)
        for w, rows, logp, target in self._pieces(loaded.model, range(n)):
            if self.ref_logp is None:
                self.ref_logp = torch.empty(*nll.shape, logp.shape[-1], dtype=torch.float16, device=self.device)
                self.ref_top1 = torch.empty(nll.shape, dtype=torch.long, device=self.device)
            self.ref_logp[w, rows] = logp.half()
            self.ref_top1[w, rows] = logp.argmax(-1)
            nll[w, rows] = -logp.gather(-1, target[:, None]).squeeze(-1)
        nll = nll.mean(-1)  # per window
        self.base_nll = nll  # each window's mean negative log-likelihood under the original
        self.base_full_ppl = math.exp(nll.mean().item())
        self.base_quick_ppl = math.exp(nll[self.quick_idx].mean().item())
        n_tok = self.windows.shape[0] * (self.windows.shape[1] - 1)
        self.protocol = {
            "text": eval_name,
            "seq_len": self.windows.shape[1],
            "stride": body,
            "bos": None if bos is None else f"{tok.convert_ids_to_tokens(bos)} (id {bos}) prepended to every window",
            "windows": self.windows.shape[0],
            "window_selection": "non-overlapping windows evenly spaced over the text",
            "tokens_scored": n_tok,
            "kl_to_original": "mean over scored tokens of KL(original || compressed), nats; reference log-probs kept in fp16",
            "top1_agreement": "fraction of scored tokens where both models' most likely next token agree",
            "quick": (
                f"first estimate on windows {self.quick_idx} ({len(self.quick_idx) * (self.windows.shape[1] - 1)} tokens): "
                "perplexity = full baseline perplexity x (compressed / baseline perplexity on those windows); "
                "KL and top-1 agreement measured on those windows; the perplexity " + INTERVAL_NOTE
            ),
        }

    @torch.inference_mode()
    def _pieces(self, model, idx):
        """The next-token log-probabilities of windows `idx`, run BATCH windows at a time, in
        pieces of at most `chunk` positions of one window: yields (k, positions, log-probs
        (pieces, vocab) in fp32, the next tokens) for the k-th window of `idx`."""
        idx, scored = list(idx), self.windows.shape[1] - 1
        for start in range(0, len(idx), BATCH):
            batch = idx[start:start + BATCH]
            logits = model(input_ids=self.windows[batch]).logits  # (batch, seq, vocab)
            for j in range(len(batch)):
                for first in range(0, scored, self.chunk):
                    rows = slice(first, min(first + self.chunk, scored))
                    yield (start + j, rows, logits[j, rows].float().log_softmax(-1),
                           self.windows[batch[j], rows.start + 1:rows.stop + 1])
            del logits

    @torch.inference_mode()
    def __call__(self, model, quick: bool = False) -> dict:
        idx = self.quick_idx if quick else list(range(self.windows.shape[0]))
        shape = (len(idx), self.windows.shape[1] - 1)
        nll, kl = torch.empty(shape, device=self.device), torch.empty(shape, device=self.device)
        agree = torch.empty(shape, dtype=torch.bool, device=self.device)
        for k, rows, logp, target in self._pieces(model, idx):
            nll[k, rows], kl[k, rows], agree[k, rows] = token_scores(
                logp, self.ref_logp[idx[k], rows].float(), self.ref_top1[idx[k], rows], target)
        kl = kl.mean().item()
        top1 = agree.float().mean().item()
        ppl = math.exp(nll.mean(-1).mean().item())
        if not quick:
            return {"perplexity": ppl, "kl_to_original": max(kl, 0.0), "top1_agreement": top1}
        return {"perplexity": self.base_full_ppl * ppl / self.base_quick_ppl, "kl_to_original": max(kl, 0.0),
                "top1_agreement": top1, **ratio_interval(nll.mean(-1) - self.base_nll[idx], self.base_full_ppl,
                                                         self.windows.shape[0])}

    def baseline(self) -> dict:
        return {"perplexity": self.base_full_ppl, "kl_to_original": 0.0, "top1_agreement": 1.0}


# ---------------------------------------------------------------------------------------
# Sentence encoder and classifier share the batching
# ---------------------------------------------------------------------------------------


class _TextBatches:
    """Texts tokenized once, sorted by length and batched to at most TOKEN_BUDGET padded tokens."""

    def __init__(self, loaded, texts):
        tok = loaded.tokenizer
        max_len = min(ENCODER_MAX_TOKENS, getattr(tok, "model_max_length", ENCODER_MAX_TOKENS) or ENCODER_MAX_TOKENS)
        lengths = [len(ids) for ids in tok(list(texts), truncation=True, max_length=max_len)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        self.order = torch.tensor(order)
        self.batches, start = [], 0
        for end in range(1, len(order) + 1):
            last = end == len(order)
            if last or (end + 1 - start) * lengths[order[end]] > TOKEN_BUDGET:
                enc = tok([texts[j] for j in order[start:end]], padding=True, truncation=True,
                          max_length=max_len, return_tensors="pt")
                self.batches.append({k: v.to(loaded.device) for k, v in enc.items()})
                start = end
        self.max_len = max_len

    @torch.inference_mode()
    def run(self, fn):
        """fn(batch) -> (b, d) per batch, returned in the texts' original order."""
        out = torch.cat([fn(b).float() for b in self.batches])
        result = torch.empty_like(out)
        result[self.order] = out
        return result


def mean_pool(model, batch):
    h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


class EncoderEval:
    """Cosine to the original embeddings, Lee similarity Spearman, Pang-Lee polarity accuracy."""

    primary = "cosine_to_original"

    def __init__(self, loaded, eval_text=None, eval_name=None):
        docs = list(data.lee_documents())
        pol_texts, pol_labels = data.polarity()
        self.n_docs = len(docs)
        self.pairs = np.array([(i, j) for i, j, _ in data.lee_similarity_pairs()])
        self.human = np.array([s for _, _, s in data.lee_similarity_pairs()])
        self.labels = np.array(pol_labels)
        # one pass over docs + sentences serves all three metrics
        self.main = _TextBatches(loaded, docs + list(pol_texts))
        if eval_text is None:
            fidelity = docs + list(pol_texts)
            self.fidelity = None  # the main pass
            eval_name = "gensim lee.cor (50 documents) + pang_lee_polarity.cor (200 sentences)"
        else:
            fidelity = [s.strip() for s in eval_text.splitlines() if s.strip()]
            self.fidelity = _TextBatches(loaded, fidelity)
        self.quick_set = _TextBatches(loaded, fidelity[::max(1, len(fidelity) // QUICK_SENTENCES)][:QUICK_SENTENCES])
        model = loaded.model
        pool = lambda b: mean_pool(model, b)  # noqa: E731
        self.ref_main = self.main.run(pool)
        self.ref = self.ref_main if self.fidelity is None else self.fidelity.run(pool)
        self.ref_quick = self.quick_set.run(pool)
        self.heads = self._fit_heads(self.ref_main[self.n_docs:])
        self.base = self._scores(self.ref_main, self.ref)
        self.protocol = {
            "fidelity_text": eval_name,
            "fidelity_items": len(fidelity),
            "pooling": "mean over non-padding tokens of the last hidden state",
            "max_tokens": self.main.max_len,
            "cosine_to_original": "mean cosine similarity between compressed and original embeddings",
            "lee_spearman": "Spearman correlation of embedding cosine similarity with the mean human rating, "
                            "all 1225 pairs of the 50 Lee documents (gensim lee.cor, similarities0-1.txt)",
            "polarity_accuracy": "accuracy on the 200 Pang-Lee polarity sentences of a logistic regression "
                                 "fitted on the original embeddings: 5 stratified folds, each fold scored by "
                                 "the head fitted on the other four",
            "quick": f"first estimate: cosine_to_original on {self.quick_set.order.numel()} of the "
                     f"{len(fidelity)} fidelity items (every k-th), " + INTERVAL_NOTE + "; other metrics need the full run",
        }

    def _fit_heads(self, emb):
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold

        x = F.normalize(emb, dim=-1).cpu().numpy()
        heads = []
        for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(x, self.labels):
            clf = LogisticRegression(max_iter=2000).fit(x[train], self.labels[train])
            heads.append((clf, test))
        return heads

    def __call__(self, model, quick: bool = False) -> dict:
        pool = lambda b: mean_pool(model, b)  # noqa: E731
        if quick:
            cos = F.cosine_similarity(self.quick_set.run(pool), self.ref_quick, dim=-1)
            return {"cosine_to_original": cos.mean().item(),
                    **bounds("cosine_to_original", *(min(1.0, x) for x in interval95(cos, self.ref.shape[0])))}
        main = self.main.run(pool)
        return self._scores(main, main if self.fidelity is None else self.fidelity.run(pool))

    def _scores(self, main, fidelity) -> dict:
        cos = F.cosine_similarity(fidelity, self.ref, dim=-1).mean().item()
        d = F.normalize(main[: self.n_docs], dim=-1)
        sims = (d[self.pairs[:, 0]] * d[self.pairs[:, 1]]).sum(-1).cpu().numpy()
        x = F.normalize(main[self.n_docs:], dim=-1).cpu().numpy()
        correct = sum(int((clf.predict(x[test]) == self.labels[test]).sum()) for clf, test in self.heads)
        return {
            "cosine_to_original": cos,
            "lee_spearman": _spearman(sims, self.human),
            "polarity_accuracy": correct / len(self.labels),
        }

    def baseline(self) -> dict:
        return dict(self.base)


class ClassifierEval:
    """A sequence classifier: agreement of its predicted labels with the original's, and KL."""

    primary = "label_agreement"

    def __init__(self, loaded, eval_text=None, eval_name=None):
        if eval_text is None:
            texts = list(data.polarity()[0])
            eval_name = "gensim pang_lee_polarity.cor (200 sentences)"
        else:
            texts = [s.strip() for s in eval_text.splitlines() if s.strip()]
        self.texts = _TextBatches(loaded, texts)
        self.quick_set = _TextBatches(loaded, texts[:QUICK_SENTENCES])
        self.ref = self.texts.run(lambda b: loaded.model(**b).logits).log_softmax(-1)
        self.ref_quick = self.quick_set.run(lambda b: loaded.model(**b).logits).log_softmax(-1)
        self.protocol = {
            "text": eval_name,
            "items": len(texts),
            "label_agreement": "fraction of items where compressed and original predict the same label",
            "kl_to_original": "mean KL(original || compressed) of the label distributions, nats",
            "quick": f"first estimate on the first {QUICK_SENTENCES} items; label agreement " + INTERVAL_NOTE,
        }

    def __call__(self, model, quick: bool = False) -> dict:
        batches, ref = (self.quick_set, self.ref_quick) if quick else (self.texts, self.ref)
        logp = batches.run(lambda b: model(**b).logits).log_softmax(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1).mean().item()
        same = (logp.argmax(-1) == ref.argmax(-1)).float()
        out = {"label_agreement": same.mean().item(), "kl_to_original": max(kl, 0.0)}
        if quick:
            lo, hi = interval95(same, self.ref.shape[0])
            out.update(bounds("label_agreement", max(0.0, lo), min(1.0, hi)))
        return out

    def baseline(self) -> dict:
        return {"label_agreement": 1.0, "kl_to_original": 0.0}
