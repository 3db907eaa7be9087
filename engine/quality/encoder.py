"""Encoders and classifiers: embedding similarity and a probe's accuracy, precision, recall
and F1 against the original, on real sentences (engine.models.data).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from engine.models import data
from engine.quality.causal import TOKEN_BUDGET
from engine.quality.stats import INTERVAL_NOTE, _spearman, bounds, classification_scores, interval95

ENCODER_MAX_TOKENS = 256


QUICK_SENTENCES = 16


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


class EncoderEval:
    """Cosine to the original embeddings, Lee similarity Spearman, and on the Pang-Lee polarity
    sentences a probe's accuracy, precision, recall and F1 (macro-averaged)."""

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
            "polarity_precision": "precision of the same predictions against the sentences' labels, macro-averaged "
                                  "over the two classes (each class's own, then their mean)",
            "polarity_recall": "recall of the same predictions, macro-averaged over the two classes",
            "polarity_f1": "F1 of the same predictions (each class's harmonic mean of precision and recall), "
                           "macro-averaged over the two classes",
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
        predicted = np.empty_like(self.labels)
        for clf, test in self.heads:
            predicted[test] = clf.predict(x[test])
        scores = classification_scores(self.labels, predicted)
        return {
            "cosine_to_original": cos,
            "lee_spearman": _spearman(sims, self.human),
            **{f"polarity_{k}": v for k, v in scores.items()},
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
            "label_precision": "precision of the compressed model's labels against the original's, macro-averaged "
                               "over the labels either predicts (scikit-learn's average='macro')",
            "label_recall": "recall of the same labels against the original's, macro-averaged",
            "label_f1": "F1 of the same labels against the original's (each label's harmonic mean of precision "
                        "and recall), macro-averaged",
            "quick": f"first estimate on the first {QUICK_SENTENCES} items; label agreement " + INTERVAL_NOTE,
        }

    def __call__(self, model, quick: bool = False) -> dict:
        batches, ref = (self.quick_set, self.ref_quick) if quick else (self.texts, self.ref)
        logp = batches.run(lambda b: model(**b).logits).log_softmax(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1).mean().item()
        same = (logp.argmax(-1) == ref.argmax(-1)).float()
        scores = classification_scores(ref.argmax(-1).cpu().numpy(), logp.argmax(-1).cpu().numpy())
        out = {"label_agreement": same.mean().item(), "kl_to_original": max(kl, 0.0),
               **{f"label_{k}": scores[k] for k in ("precision", "recall", "f1")}}
        if quick:
            lo, hi = interval95(same, self.ref.shape[0])
            out.update(bounds("label_agreement", max(0.0, lo), min(1.0, hi)))
        return out

    def baseline(self) -> dict:
        return {"label_agreement": 1.0, "kl_to_original": 0.0, "label_precision": 1.0, "label_recall": 1.0,
                "label_f1": 1.0}
