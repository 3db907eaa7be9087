"""Causal language models: perplexity, KL divergence and top-1 agreement against the
original, on held-out news text (engine.models.data).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.errors import UserError
from engine.models import data
from engine.quality.stats import BATCH, FULL_WINDOWS, INTERVAL_NOTE, QUICK_WINDOWS, ratio_interval, token_scores

SEQ_LEN = 256  # causal LM window, BOS included


TOKEN_BUDGET = 4096


TOKEN_CHUNK = 256  # causal LM: scored tokens whose vocabulary-wide log-probabilities are held at once


def text_windows(tokenizer, eval_text: str | None = None, eval_name: str | None = None):
    """The evaluation's windows of a text (default: the packaged news text, engine.models.data):
    (windows, quick, name): at most FULL_WINDOWS non-overlapping windows of SEQ_LEN token ids,
    evenly spaced over the text, each starting with the tokenizer's BOS where it has one; the
    indices of the QUICK_WINDOWS of them the first estimate scores, evenly spaced; the text's name."""
    if eval_text is None:
        eval_text = "\n\n".join(data.lee_background())
        eval_name = "gensim lee_background.cor (300 news articles, Lee et al. 2005)"
    ids = tokenizer(eval_text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    bos = tokenizer.bos_token_id
    body = SEQ_LEN - (bos is not None)
    n_avail = len(ids) // body
    if n_avail < 1:
        raise UserError(f"--eval-text: {eval_name} has {len(ids)} tokens, too short for one window of {body} tokens")
    picks = np.linspace(0, n_avail - 1, min(FULL_WINDOWS, n_avail)).round().astype(int)
    windows = [ids[i * body:(i + 1) * body] for i in dict.fromkeys(picks.tolist())]
    if bos is not None:
        windows = [[bos] + w for w in windows]
    n = len(windows)
    quick = list(dict.fromkeys(np.linspace(0, n - 1, min(QUICK_WINDOWS, n)).round().astype(int).tolist()))
    return windows, quick, eval_name


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
        windows, self.quick_idx, eval_name = text_windows(tok, eval_text, eval_name)
        bos = tok.bos_token_id
        body = SEQ_LEN - (bos is not None)
        self.windows = torch.tensor(windows, device=self.device)
        # reference: the original model's next-token log-probabilities, stored as fp16
        self.ref_logp = self.ref_top1 = None
        nll = torch.empty(self.windows.shape[0], self.windows.shape[1] - 1, device=self.device)
        for w, rows, logp, target in self._pieces(loaded.model, range(len(windows))):
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
