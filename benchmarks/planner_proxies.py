"""Proxies that add up, tried for the planner on a language model, and not kept (README, *The planner*).

Each layer takes the option of the planner's default ladder with the least predicted loss
within the bytes of uniform `--bits` (engine.studies.planner.least_loss, exact), the prediction being:

- fisher: SqueezeLLM's sensitivity, 1/2 sum F * dW^2, with F the mean squared gradient of the
  next-token loss per calibration sequence at the original weights and dW the option's
  weights minus the original's;
- taylor: the expansion at the uniform model itself, g^T d + 1/2 s sum F * d^2, with g and F
  the mean gradient and mean squared gradient per sequence at the uniform model, d the
  option's weights minus the uniform model's, and s the Fisher's scale (`--fisher-scale`:
  1 per sequence, or the sequence length for a per-token estimate).

The gradients are taken on the calibration paragraphs, or (`--text news`) on the 50 Lee news
documents, of the evaluation's source and never read by the causal-LM evaluation. The plan and
the uniform setting are then scored with the full protocol on the evaluation text and on
held-out Wikipedia paragraphs (the 64th to 256th of the calibration source, past the
calibration sequences). Printed side by side; `--out FILE` writes the plan as a recipe.

    .venv/bin/python benchmarks/planner_proxies.py [--model smollm2] [--bits 4] [--proxy fisher|taylor]
        [--ladder 3/ch,4/ch,...] [--sequences 64] [--fisher-scale 1] [--text news] [--out plan.json]
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.drivers.explorer import Explorer  # noqa: E402
from engine.hardware.machine import header  # noqa: E402
from engine.models.calibrate import SEQ_LEN, sequences, wiki_paragraphs  # noqa: E402
from engine.models.data import lee_documents  # noqa: E402
from engine.pipeline import compress as pipeline  # noqa: E402
from engine.recipe.recipe import Recipe  # noqa: E402
from engine.studies.planner import REFERENCE, default_ladder, least_loss, parse_ladder, with_choice  # noqa: E402
from engine.studies.sensitivity import names_regex  # noqa: E402


def gradients(model, tokenizer, weights: dict, samples: int, text: str = "wikipedia") -> tuple[dict, dict]:
    """The mean gradient and mean squared gradient of each of `weights` (name -> tensor that
    `model` computes with, requiring grad), one next-token loss per calibration sequence."""
    g = {n: torch.zeros_like(w) for n, w in weights.items()}
    f = {n: torch.zeros_like(w) for n, w in weights.items()}
    # the calibration paragraphs, or the 50 Lee documents (news of the evaluation's source that the
    # causal-LM evaluation never reads)
    seqs = sequences(tokenizer, samples, SEQ_LEN, None if text == "wikipedia" else lee_documents())
    with torch.enable_grad():
        for ids in seqs:
            x = torch.tensor([ids], device=next(iter(weights.values())).device)
            loss = model(input_ids=x, labels=x).loss
            for n, gi in zip(weights, torch.autograd.grad(loss, list(weights.values()))):
                g[n] += gi / len(seqs)
                f[n] += gi.float() ** 2 / len(seqs)
    return g, f


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--proxy", choices=("fisher", "taylor"), default="fisher")
    ap.add_argument("--ladder", default=None, help="default: the planner's default ladder")
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--fisher-scale", type=float, default=1.0)
    ap.add_argument("--text", choices=("wikipedia", "news"), default="wikipedia",
                    help="the gradients' text: the calibration paragraphs, or the 50 Lee news documents")
    ap.add_argument("--out", help="also write the plan as a recipe JSON file")
    a = ap.parse_args()
    print(header(), flush=True)

    ex = Explorer.open(a.model)
    if ex.loaded.kind != "causal-lm":
        sys.exit("error: the proxies here are for language models")
    uniform = Recipe(bits=a.bits)
    layers = [i for i in ex.selected(uniform) if i.tied_to is None]
    work = ex.workspace()
    work.apply(uniform)
    if a.proxy == "fisher":  # at the original weights
        model = ex.loaded.model
        weights = {i.name: model.get_parameter(i.param_name) for i in layers}
        for p in model.parameters():
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        try:
            g, f = gradients(model, ex.loaded.tokenizer, weights, a.sequences, a.text)
        finally:
            for w in weights.values():
                w.requires_grad_(False)
    else:  # at the uniform model: its holders' weights, made trainable for the gradient
        weights = {}
        for i in layers:
            w = work.holders[i.name].w.detach().clone().requires_grad_(True)
            work.holders[i.name].fill((w,))
            weights[i.name] = w
        g, f = gradients(work.model, ex.loaded.tokenizer, weights, a.sequences, a.text)  # apply() below refills the holders

    options = [REFERENCE] + (parse_ladder(a.ladder) if a.ladder else default_ladder(uniform))
    loss, cost = {}, {}
    for i in layers:
        base = ex.weight(i.name).float()
        for o in options:
            lr = with_choice(uniform, {"x": "^x$"}, {"x": o}).for_layer("x")
            stored = pipeline.compress(i.name, ex.weight(i.name), lr, lambda: None)
            w = stored.matrix().float()
            if o == REFERENCE and a.proxy == "taylor":
                base = w
            d = w - base
            loss[i.name, o] = (0.5 * (f[i.name] * d * d).sum().item() if a.proxy == "fisher" else
                               (g[i.name] * d).sum().item() + 0.5 * a.fisher_scale * (f[i.name] * d * d).sum().item())
            cost[i.name, o] = stored.bytes.compressed_bytes
    units = [i.name for i in layers]
    ref_loss = {u: loss[u, REFERENCE] for u in units}
    choice = least_loss(units, {u: options for u in units}, {k: v - ref_loss[k[0]] for k, v in loss.items()},
                        {k: v - cost[k[0], REFERENCE] for k, v in cost.items()}, 0)
    plan = with_choice(uniform, {u: names_regex([u]) for u in units}, choice)
    if a.out:
        Path(a.out).write_text(plan.to_json())
    counts = collections.Counter(o.label for o in choice.values())
    print(f"{a.model}, {a.proxy} proxy over {a.sequences} sequences of {a.text}, per layer, within the bytes of {uniform.describe()}")
    print("plan:", ", ".join(f"{n} layers {label}" for label, n in counts.most_common()))
    held_out = "\n\n".join(wiki_paragraphs(256)[64:256])
    print(f"{'':8} {'bytes':>12}  {'text':9} {'perplexity':>10} {'KL':>7} {'top-1':>6}")
    for name, recipe in (("uniform", uniform), ("plan", plan)):
        applied = work.apply(recipe)
        for text, metrics in (("news", work.evaluate()),
                              ("wikipedia", work.evaluate(eval_text=held_out, eval_name="Wikipedia, paragraphs 64-255"))):
            print(f"{name:8} {applied.memory.compressed_bytes:>12,}  {text:9} {metrics['perplexity']:>10.2f} "
                  f"{metrics['kl_to_original']:>7.4f} {metrics['top1_agreement']:>6.4f}")


if __name__ == "__main__":
    main()
