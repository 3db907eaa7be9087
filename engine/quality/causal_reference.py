"""A causal language model as the reference: its outputs on the text kept small, and candidates
scored against them token by token (engine.quality.divergence), in bounded memory.

    ref = CausalReference.from_text(loaded)          # the reference runs once, on the packaged text
    stats = ref.score(work.model)                     # a candidate: per-token KL, nll, top token, delta p
    divergence.summarize(stats, ref.n_windows)

The reference's logits over the vocabulary are never kept for the whole text. The reference
runs once over the windows (engine.quality.causal.text_windows), and keeps, per scored token,
the input of its output head (one vector of the hidden size: 4,080 tokens of a 2,048-wide model
take 32 MiB, where their logits over a 256k vocabulary would take 4 GiB) and its own negative
log-likelihood of the target. A candidate runs a window at a time; the reference's logits for
that window are recomputed from the kept inputs by the reference's head, a piece of
`divergence.rows_per_piece(vocab)` positions at a time, so that at most one window of the
candidate's logits and a few pieces are held at once, and the KL is exact.

Where the head applied to its kept input does not give the reference's logits (a soft cap or a
scale after the head, as Gemma 2's; a head the forward pass does not call once), checked on
every window as the reference runs, it keeps no input and runs again beside each candidate, a
window at a time: the same values, for one more forward pass of the reference per candidate.
"""
from __future__ import annotations

import copy
import logging

import torch

from engine.quality.causal import text_windows
from engine.quality.divergence import TokenStats, perplexity, rows_per_piece, token_stats

log = logging.getLogger(__name__)

# the config fields that make two models the same network over the same vocabulary, in the order
# a difference is named
SAME_MODEL = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
              "num_attention_heads", "num_key_value_heads", "n_embd", "n_layer", "n_head")


def model_difference(reference, candidate, fields: tuple[str, ...] = SAME_MODEL) -> str | None:
    """The first way the config `candidate` describes another model than `reference` ('vocabulary
    size 30522, the reference 49152'), or None where the `fields` (default SAME_MODEL) agree."""
    for field in fields:
        a, b = getattr(reference, field, None), getattr(candidate, field, None)
        if a != b:
            what = {"model_type": "architecture", "vocab_size": "vocabulary size"}.get(field, field)
            return f"{what} {b}, the reference {a}"
    return None


class CausalReference:
    """The reference's outputs on `windows` ((n, seq) token ids, on the model's device), kept as
    its output head's inputs (or, where the head alone does not give its logits, recomputed by
    running it again); `nll` its per-token negative log-likelihood, `exact_head` which of the two."""

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, text: str | None = None):
        self.model, self.windows, self.text = model, windows, text
        self.targets = windows[:, 1:]  # (n, seq - 1): the token each position predicts
        self.head = model.get_output_embeddings()
        self.hidden, self.nll = self._run()
        self.exact_head = self.hidden is not None

    @classmethod
    def from_text(cls, loaded, eval_text: str | None = None, eval_name: str | None = None,
                  quick: bool = False) -> "CausalReference":
        """The reference `loaded` (engine.models.loading.Loaded) on the windows of the causal
        evaluation's text (default: the packaged news text); `quick`: on its first estimate's windows."""
        windows, quick_idx, name = text_windows(loaded.tokenizer, eval_text, eval_name)
        if quick:
            windows = [windows[i] for i in quick_idx]
        return cls(loaded.model, torch.tensor(windows, device=loaded.device), name)

    @property
    def n_windows(self) -> int:
        return self.windows.shape[0]

    def protocol(self) -> dict:
        """How the comparison was made, as plain data."""
        return {
            "text": self.text, "windows": self.n_windows, "seq_len": self.windows.shape[1],
            "tokens_scored": self.targets.numel(),
            "kl": "KL(reference || candidate) over the full vocabulary, exact, in pieces of positions; the "
                  + ("reference's logits recomputed from its output head's inputs, kept from its one run"
                     if self.exact_head else "reference run again beside each candidate (its logits are not "
                                            "its head applied to its last hidden states)"),
        }

    def summary(self) -> dict:
        """The reference's own perplexity, with its 95% interval (divergence.perplexity)."""
        return perplexity(self.nll.flatten(), self.n_windows)

    @torch.inference_mode()
    def _run(self):
        """One pass of the reference over the windows: (the head's inputs (n, seq - 1, hidden), or
        None where the head does not give the logits; the per-token nll (n, seq - 1))."""
        # the hook goes on a copy of the modules (sharing every tensor): whoever else runs the
        # reference meanwhile is neither recorded nor disturbed
        shared = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()]}
        model = copy.deepcopy(self.model, shared)
        head, seen = model.get_output_embeddings(), []
        handle = head.register_forward_pre_hook(lambda m, args: seen.append(args[0])) if head is not None else None
        hidden, nll = [], torch.empty(self.targets.shape, device=self.windows.device)
        try:
            for w in range(self.n_windows):
                seen.clear()
                logits = model(input_ids=self.windows[w:w + 1]).logits[0, :-1]  # (seq - 1, vocab)
                one = len(seen) == 1 and seen[0].dim() == 3 and seen[0].shape[1] == logits.shape[0] + 1
                h = seen[0][0, :-1] if one else None  # (seq - 1, hidden): the head's input, once per pass
                exact = hidden is not None and h is not None
                for rows in self._rows(logits.shape[-1]):
                    piece = logits[rows].float()
                    nll[w, rows] = -piece.log_softmax(-1).gather(-1, self.targets[w, rows, None]).squeeze(-1)
                    exact = exact and _close(self.head(h[rows]), logits[rows])
                if hidden is not None and exact:
                    hidden.append(h.clone())
                elif hidden is not None:
                    log.info("compare: the reference's logits are not its head applied to its last hidden states: "
                             "it runs again beside each candidate")
                    hidden = None
                del logits
        finally:
            if handle is not None:
                handle.remove()
        return (torch.stack(hidden) if hidden else None), nll

    def _rows(self, vocab: int):
        """Slices of the scored positions of a window, `rows_per_piece(vocab)` at a time."""
        n, step = self.targets.shape[1], rows_per_piece(vocab)
        return [slice(first, min(first + step, n)) for first in range(0, n, step)]

    def _reference_pieces(self, w: int, vocab: int):
        """(rows, the reference's logits on those positions of window w), piece by piece."""
        logits = None if self.exact_head else self.model(input_ids=self.windows[w:w + 1]).logits[0, :-1]
        for rows in self._rows(vocab):
            yield rows, (self.head(self.hidden[w, rows]) if self.exact_head else logits[rows])

    @torch.inference_mode()
    def score(self, model: torch.nn.Module) -> TokenStats:
        """The per-token statistics of `model` (a candidate over the same vocabulary) against the
        reference on its windows, token after token, window after window."""
        parts = []
        for w in range(self.n_windows):
            cand = model(input_ids=self.windows[w:w + 1]).logits[0, :-1]  # (seq - 1, vocab)
            for rows, ref in self._reference_pieces(w, cand.shape[-1]):
                if ref.shape != cand[rows].shape:
                    raise ValueError(f"score: the candidate's logits {tuple(cand.shape)}, the reference's "
                                     f"{tuple(ref.shape)} on window {w}")
                parts.append(token_stats(ref, cand[rows], self.targets[w, rows]))
            del cand
        return TokenStats.cat(parts)


def _close(recomputed: torch.Tensor, logits: torch.Tensor) -> bool:
    """Whether the head's logits recomputed on a piece of positions are the forward pass's, up to
    the rounding of a matrix product done in other blocks."""
    scale = logits.abs().max().item() or 1.0
    return bool(((recomputed.float() - logits.float()).abs().max() <= 1e-4 * scale).item())
