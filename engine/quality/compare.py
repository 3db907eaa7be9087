"""The original and a compressed model side by side, on the user's own input.

Each function takes the two models and returns plain data (strings, numbers), so a page
or the command line can show it without touching tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.errors import UserError
from engine.models.inputs import decoder_start
from engine.quality.encoder import mean_pool

MAX_PROMPT_TOKENS = 512


def _prompt_ids(tokenizer, prompt: str, device) -> torch.Tensor:
    if not prompt.strip():
        raise UserError("prompt: type some text first")
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, -MAX_PROMPT_TOKENS:]
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0, 0].item() != bos:
        ids = torch.cat([torch.tensor([[bos]]), ids], dim=1)
    return ids.to(device)


@torch.inference_mode()
def continuation(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of `prompt` (the prompt itself not included)."""
    ids = _prompt_ids(tokenizer, prompt, next(model.parameters()).device)
    out = ids
    past = None
    step = ids
    for _ in range(max_new_tokens):
        res = model(input_ids=step, past_key_values=past, use_cache=True)
        past = res.past_key_values
        step = res.logits[:, -1:].argmax(-1)
        out = torch.cat([out, step], dim=1)
        if tokenizer.eos_token_id is not None and step.item() == tokenizer.eos_token_id:
            break
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.inference_mode()
def next_token_probs(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = _prompt_ids(tokenizer, prompt, next(model.parameters()).device)
    return model(input_ids=ids).logits[0, -1].float().softmax(-1)


def causal_lm(original, compressed, tokenizer, prompt: str, top_k: int = 10, max_new_tokens: int = 40) -> dict:
    """Greedy continuations and the top next tokens of both models.

    Returns {'original': str, 'compressed': str, 'top': [{'token', 'original', 'compressed'}],
    'kl': KL(original || compressed) of the next-token distribution, nats}.
    """
    p = next_token_probs(original, tokenizer, prompt)
    q = next_token_probs(compressed, tokenizer, prompt)
    return {
        "original": continuation(original, tokenizer, prompt, max_new_tokens),
        "compressed": continuation(compressed, tokenizer, prompt, max_new_tokens),
        **_top_tokens(tokenizer, p, q, top_k),
    }


def _top_tokens(tokenizer, p: torch.Tensor, q: torch.Tensor, top_k: int) -> dict:
    """{'top': the top_k tokens of either distribution, in the original's order, with both
    probabilities; 'kl': KL(p || q), nats} for the original's p and the compressed model's q."""
    ids = torch.cat([p.topk(top_k).indices, q.topk(top_k).indices]).unique(sorted=False).tolist()
    ids.sort(key=lambda i: -p[i].item())
    top = [{"token": tokenizer.decode([i]), "original": p[i].item(), "compressed": q[i].item()} for i in ids]
    kl = (p * (p.clamp_min(1e-30).log() - q.clamp_min(1e-30).log())).sum().item()
    return {"top": top, "kl": max(kl, 0.0)}


@torch.inference_mode()
def _decode(model, tokenizer, source: str, max_new_tokens: int) -> tuple[str, torch.Tensor]:
    """Greedy output of an encoder-decoder for `source` (the encoder runs once, the decoder
    one token at a time with its cache), and the probabilities of its first output token."""
    if not source.strip():
        raise UserError("source: type some text first")
    dev = next(model.parameters()).device
    src = tokenizer(source, truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt")["input_ids"].to(dev)
    encoded = model.get_encoder()(input_ids=src)
    step = torch.tensor([[decoder_start(model)]], device=dev)
    eos = getattr(model.config, "eos_token_id", None)
    eos = set(eos if isinstance(eos, list) else [eos, tokenizer.eos_token_id]) - {None}
    out, past, first = [], None, None
    for _ in range(max_new_tokens):
        res = model(encoder_outputs=encoded, decoder_input_ids=step, past_key_values=past, use_cache=True)
        past, logits = res.past_key_values, res.logits[0, -1].float()
        first = logits.softmax(-1) if first is None else first
        step = logits.argmax().view(1, 1)
        if step.item() in eos:
            break
        out.append(step.item())
    return tokenizer.decode(out, skip_special_tokens=True), first


def seq2seq(original, compressed, tokenizer, source: str, top_k: int = 10, max_new_tokens: int = 40) -> dict:
    """What both models write for `source` (greedy, at most `max_new_tokens` tokens) and their
    first output token's most likely values; the same keys as `causal_lm`: 'original',
    'compressed', 'top' and 'kl' (of the first output token's distribution, nats)."""
    text_p, p = _decode(original, tokenizer, source, max_new_tokens)
    text_q, q = _decode(compressed, tokenizer, source, max_new_tokens)
    return {"original": text_p, "compressed": text_q, **_top_tokens(tokenizer, p, q, top_k)}


@torch.inference_mode()
def _embed(model, tokenizer, texts: list[str]) -> torch.Tensor:
    dev = next(model.parameters()).device
    enc = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt").to(dev)
    return F.normalize(mean_pool(model, enc).float(), dim=-1)


def encoder(original, compressed, tokenizer, query: str, sentences: list[str]) -> list[dict]:
    """How `query` ranks `sentences` under both models (cosine of mean-pooled embeddings).

    Returns one row per sentence, in the original model's order: sentence, the two
    similarities and the two ranks (1 = closest).
    """
    sentences = [s.strip() for s in sentences if s.strip()]
    if not query.strip() or not sentences:
        raise UserError("compare: give a query and at least one sentence")
    rows = []
    for name, model in (("original", original), ("compressed", compressed)):
        e = _embed(model, tokenizer, [query] + sentences)
        sims = (e[1:] @ e[0]).tolist()
        order = sorted(range(len(sims)), key=lambda i: -sims[i])
        rank = {i: r + 1 for r, i in enumerate(order)}
        for i, s in enumerate(sims):
            if name == "original":
                rows.append({"sentence": sentences[i]})
            rows[i][f"{name}_similarity"] = s
            rows[i][f"{name}_rank"] = rank[i]
    return sorted(rows, key=lambda r: r["original_rank"])


@torch.inference_mode()
def classifier(original, compressed, tokenizer, text: str) -> list[dict]:
    """Label probabilities of both models for `text`."""
    if not text.strip():
        raise UserError("compare: type some text first")
    dev = next(original.parameters()).device
    enc = tokenizer([text], truncation=True, max_length=512, return_tensors="pt").to(dev)
    p = original(**enc).logits[0].float().softmax(-1)
    q = compressed(**enc).logits[0].float().softmax(-1)
    labels = getattr(original.config, "id2label", None) or {}
    return [{"label": labels.get(i, str(i)), "original": p[i].item(), "compressed": q[i].item()}
            for i in range(p.numel())]
