"""Recovery by knowledge distillation: train what survives compression to match the original.

The trained values are the stored matrices of the compressed layers (W, or the factors A and
B), nothing else: masks and ranks stay as compression left them, and every forward pass puts
the values back on their grid (the layer's uniform grid or k-means codebook) with a
straight-through estimator, so the result stores in exactly the bytes it did before. The
text is the calibration text (engine.models.calibrate), disjoint from the evaluation text; the
teacher is the uncompressed model:

    causal LM    KL(original || compressed) of the next-token distributions, every position
    seq2seq      the same, at every target position: each sequence's first half is the
                 encoder's input, its second half teacher-forced into the decoder
    encoder      1 - cosine of the last hidden states, every token
    classifier   KL(original || compressed) of the label distributions
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.formats.grid import Grid
from engine.layers.kinds import Stored
from engine.models.calibrate import SOURCE, sequences
from engine.models.inputs import model_inputs
from engine.recipe.recipe import Recipe

SAMPLES = 128  # calibration paragraphs, the first 32 of them those of the statistics
BATCH = 4  # calibration sequences per step, cut to the shortest of them (no padding)
OBJECTIVES = {
    "causal-lm": "KL(original || compressed) of next-token distributions, mean over positions",
    "seq2seq": "KL(original || compressed) of the decoder's next-token distributions, mean over target positions "
               "(first half of each sequence into the encoder, second half teacher-forced)",
    "encoder": "1 - cosine similarity of the last hidden states, mean over tokens",
    "classifier": "KL(original || compressed) of the label distributions",
}


@dataclass(frozen=True)
class Trainable:
    """One compressed layer: its holder (holding the compressed values), and for each stored
    matrix its values before quantization, its grid and its pruning mask."""

    holder: Stored
    unquantized: tuple[torch.Tensor, ...]
    grids: tuple[Grid, ...]
    keeps: tuple[torch.Tensor | None, ...]
    recipe: Recipe


@dataclass(frozen=True)
class Distillation:
    """What a distillation run did: its settings, the loss at every step, and its time."""

    steps: int
    lr: float
    batch: int
    objective: str
    text: str
    tokens_per_step: list[int]
    loss: list[float]
    seconds: float

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "batch": self.batch, "objective": self.objective,
                "text": self.text, "loss_first": self.loss[0] if self.loss else None,
                "loss_last": self.loss[-1] if self.loss else None, "loss": self.loss,
                "tokens_per_step": self.tokens_per_step, "seconds": round(self.seconds, 3)}


def _objective(kind: str, student, teacher, ids: torch.Tensor) -> torch.Tensor:
    if kind == "encoder":
        with torch.no_grad():
            t = teacher(input_ids=ids).last_hidden_state
        s = student(input_ids=ids).last_hidden_state
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    inputs = model_inputs(teacher, ids)  # input_ids; for an encoder-decoder, source and teacher-forced target
    with torch.no_grad():
        t = teacher(**inputs).logits.float().log_softmax(-1)
    s = student(**inputs).logits.float().log_softmax(-1)
    # KL(t || s) summed over the vocabulary, averaged over positions (or items)
    return F.kl_div(s.flatten(0, -2), t.flatten(0, -2), log_target=True, reduction="batchmean")


def _quantized(p: torch.Tensor, grid: Grid, keep: torch.Tensor | None, recipe: Recipe) -> torch.Tensor:
    """p on its grid in the forward pass, the identity in the backward (straight-through)."""
    with torch.no_grad():
        snapped = grid.snap(p, recipe)
    q = snapped + (p - p.detach())  # exactly snapped (p - p is 0), gradient 1 to p
    return q if keep is None else q * keep


def distill(student, teacher, tokenizer, kind: str, parts: list[Trainable], steps: int, lr: float,
            progress=None) -> Distillation:
    """Train the stored matrices of `parts` (in `student`, whose holders they are) for `steps`
    steps of Adam at learning rate `lr` on the calibration sequences, BATCH at a time in
    order, to match `teacher` (not modified, no gradient). `progress(step, steps, loss)` is
    called after each step. Leaves every holder with its trained values, on their grids."""
    t0 = time.perf_counter()
    seqs = sequences(tokenizer, SAMPLES)
    device = next(teacher.parameters()).device
    # inference tensors (made under inference_mode) cannot take part in autograd: copy them
    parts = [Trainable(t.holder, t.unquantized, tuple(Grid(*(_copy(x) for x in (g.scale, g.zero, g.codebook)))
                                                      for g in t.grids),
                       tuple(_copy(k) for k in t.keeps), t.recipe) for t in parts]
    params = [[_start(q, u, g, t.recipe) for q, u, g in zip(t.holder.tensors(), t.unquantized, t.grids)]
              for t in parts]
    flat = [p for ps in params for p in ps]
    opt = torch.optim.Adam(flat, lr=lr)

    def fill(train: bool):
        for t, ps in zip(parts, params):
            qs = [_quantized(p, g, k, t.recipe) for p, g, k in zip(ps, t.grids, t.keeps)]
            if not train:
                qs = [q.detach() for q in qs]
            t.holder.fill(qs)

    losses, tokens = [], []
    try:
        for step in range(steps):
            chunk = [seqs[(step * BATCH + i) % len(seqs)] for i in range(BATCH)]
            n = min(len(s) for s in chunk)
            ids = torch.tensor([s[:n] for s in chunk], device=device)
            with torch.enable_grad():
                fill(train=True)
                loss = _objective(kind, student, teacher, ids)
                grads = torch.autograd.grad(loss, flat, allow_unused=True)  # e.g. a pooler: unused
            for p, g in zip(flat, grads):
                p.grad = g
            opt.step()
            losses.append(loss.item())
            tokens.append(ids.numel())
            if progress:
                progress(step + 1, steps, losses[-1])
    finally:
        with torch.no_grad():
            fill(train=False)
    return Distillation(steps, lr, BATCH, OBJECTIVES[kind], f"calibration text: {SOURCE}", tokens, losses,
                        time.perf_counter() - t0)


def _copy(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def _start(q: torch.Tensor, unquantized: torch.Tensor, grid: Grid, recipe: Recipe) -> torch.Tensor:
    """Where a stored matrix's trained values start: at the value before quantization wherever
    that rounds to the compressed value q (all of them, for round to nearest), else at q; so
    the first forward pass computes exactly the compressed model, and values that sat close
    to a rounding boundary can cross it after a small step."""
    with torch.no_grad():
        u = unquantized.float()
        p = torch.where(grid.snap(u, recipe) == q, u, q.float())
    return p.clone().requires_grad_()
