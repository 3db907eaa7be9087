"""Encoder-decoder models (T5, BART): their quality on held-out text.

A window of tokens is cut in two (engine.models.inputs): the source half goes to the encoder,
the target half is read by the decoder teacher-forced and predicted token by token.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine.errors import UserError
from engine.models import data
from engine.models.inputs import decoder_start, shift_right, special_frame
from engine.quality.stats import BATCH, FULL_WINDOWS, INTERVAL_NOTE, QUICK_WINDOWS, ratio_interval, token_scores

WINDOW = 256  # tokens of held-out text per window: a source half and a target half
SOURCE_LEN = WINDOW // 2


class Seq2SeqEval:
    """Teacher-forced perplexity of the decoder on held-out text, KL from the original and
    top-1 next-token agreement.

    The text (the causal-LM evaluator's: gensim lee_background.cor, or --eval-text) is
    tokenized without special tokens and cut into non-overlapping windows of WINDOW = 256
    tokens, at most 16, evenly spaced over the text. Each window's first 128 tokens are the
    source: the encoder's input, framed by the tokenizer's special tokens as it frames any text
    (T5: followed by </s>). Its last 128 tokens are the target: the decoder reads the decoder
    start token and the target shifted right by one, and every one of the 128 target tokens is
    scored. Perplexity is exp of the mean negative log-likelihood of the target tokens; KL and
    top-1 agreement compare the next-token distributions at the same positions with the
    original model's. The original's log-probabilities are kept in fp16 (windows x 128 x vocab
    values); the compressed model is run BATCH windows at a time and each window is scored and
    dropped, so the evaluation holds one batch of log-probabilities and one window's
    temporaries beside them."""

    primary = "perplexity"

    def __init__(self, loaded, eval_text=None, eval_name=None):
        tok, model = loaded.tokenizer, loaded.model
        self.device = loaded.device
        if eval_text is None:
            eval_text = "\n\n".join(data.lee_background())
            eval_name = "gensim lee_background.cor (300 news articles, Lee et al. 2005)"
        ids = tok(eval_text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        n_avail = len(ids) // WINDOW
        if n_avail < 1:
            raise UserError(f"--eval-text: {eval_name} has {len(ids)} tokens, too short for one window of {WINDOW} tokens")
        picks = np.linspace(0, n_avail - 1, min(FULL_WINDOWS, n_avail)).round().astype(int)
        windows = [ids[i * WINDOW:(i + 1) * WINDOW] for i in dict.fromkeys(picks.tolist())]
        prefix, suffix = special_frame(tok)
        self.source = torch.tensor([prefix + w[:SOURCE_LEN] + suffix for w in windows], device=self.device)
        self.target = torch.tensor([w[SOURCE_LEN:] for w in windows], device=self.device)
        self.start = decoder_start(model)
        n = len(windows)
        self.quick_idx = list(dict.fromkeys(np.linspace(0, n - 1, min(QUICK_WINDOWS, n)).round().astype(int).tolist()))
        ref_logp, ref_top1, nll = [], [], []
        for b, logp in self._batches(model, range(n)):
            ref_logp.append(logp.half())  # the reference, kept in fp16
            ref_top1.append(logp.argmax(-1))
            nll.append(-logp.gather(-1, self.target[b, :, None]).squeeze(-1).mean(-1))
        self.ref_logp, self.ref_top1, nll = torch.cat(ref_logp), torch.cat(ref_top1), torch.cat(nll)
        self.base_nll = nll  # each window's mean negative log-likelihood under the original
        self.base_full_ppl = math.exp(nll.mean().item())
        self.base_quick_ppl = math.exp(nll[self.quick_idx].mean().item())
        t = self.target.shape[1]
        frame = " + ".join(filter(None, [" ".join(tok.convert_ids_to_tokens(prefix)), f"{SOURCE_LEN} tokens",
                                         " ".join(tok.convert_ids_to_tokens(suffix))]))
        self.protocol = {
            "text": eval_name,
            "window": WINDOW,
            "source_tokens": SOURCE_LEN,
            "target_tokens": t,
            "encoder_input": f"the first {SOURCE_LEN} tokens of each window, framed as the tokenizer frames text: {frame}",
            "decoder_input": f"teacher-forced: {tok.convert_ids_to_tokens(self.start)} (id {self.start}, the decoder "
                             f"start token), then the last {t} tokens of the window shifted right by one",
            "windows": n,
            "window_selection": "non-overlapping windows evenly spaced over the text",
            "tokens_scored": n * t,
            "perplexity": "exp of the mean negative log-likelihood of the target tokens",
            "kl_to_original": "mean over scored tokens of KL(original || compressed), nats; reference log-probs kept in fp16",
            "top1_agreement": "fraction of scored tokens where both models' most likely next token agree",
            "quick": (
                f"first estimate on windows {self.quick_idx} ({len(self.quick_idx) * t} tokens): "
                "perplexity = full baseline perplexity x (compressed / baseline perplexity on those windows); "
                "KL and top-1 agreement measured on those windows; the perplexity " + INTERVAL_NOTE
            ),
        }

    @torch.inference_mode()
    def _batches(self, model, idx):
        """(indices, log-probabilities (b, target, vocab) fp32) for BATCH windows at a time."""
        idx = list(idx)
        for i in range(0, len(idx), BATCH):
            b = idx[i:i + BATCH]
            out = model(input_ids=self.source[b], decoder_input_ids=shift_right(self.target[b], self.start),
                        use_cache=False)
            yield b, out.logits.float().log_softmax(-1)

    @torch.inference_mode()
    def __call__(self, model, quick: bool = False) -> dict:
        idx = self.quick_idx if quick else range(self.target.shape[0])
        scores = []  # per window: mean NLL, KL and agreement over its target tokens
        for b, logp in self._batches(model, idx):
            for j, w in enumerate(b):  # one window at a time: its temporaries are (target, vocab)
                n, k, a = token_scores(logp[j], self.ref_logp[w].float(), self.ref_top1[w], self.target[w])
                scores.append(torch.stack([n.mean(), k.mean(), a.float().mean()]))
        per_window = torch.stack(scores)
        nll, kl, agree = per_window.mean(0).tolist()
        ppl = math.exp(nll)
        if not quick:
            return {"perplexity": ppl, "kl_to_original": max(kl, 0.0), "top1_agreement": agree}
        return {"perplexity": self.base_full_ppl * ppl / self.base_quick_ppl, "kl_to_original": max(kl, 0.0),
                "top1_agreement": agree, **ratio_interval(per_window[:, 0] - self.base_nll[list(idx)],
                                                          self.base_full_ppl, self.target.shape[0])}

    def baseline(self) -> dict:
        return {"perplexity": self.base_full_ppl, "kl_to_original": 0.0, "top1_agreement": 1.0}
