"""How text goes into a model: the tokens alone, or for encoder-decoder models (T5, BART) a
source and a target.

A sequence of tokens is cut in two: the first half is the source, the encoder's input; the
second half is the target, read by the decoder teacher-forced (the decoder start token, then
the target shifted right by one). The evaluator (engine.quality.seq2seq), the calibration
(engine.models.calibrate) and distillation (engine.drivers.distill) all feed a model this way:

    model(**model_inputs(model, ids))     # ids (batch, n): source ids[:, :n//2], target the rest
"""
from __future__ import annotations

import torch

from engine.errors import UserError


def is_seq2seq(model) -> bool:
    """Whether `model` is an encoder-decoder that generates (T5ForConditionalGeneration,
    BartForConditionalGeneration; not BartForSequenceClassification, which reads one text)."""
    return bool(getattr(model.config, "is_encoder_decoder", False)) and model.can_generate()


def decoder_start(model) -> int:
    """The token the decoder starts from (T5: the pad token; BART: </s>), from the config or
    the generation config."""
    for cfg in (model.config, getattr(model, "generation_config", None)):
        start = getattr(cfg, "decoder_start_token_id", None)
        if start is not None:
            return int(start)
    raise UserError("this encoder-decoder model's config has no decoder_start_token_id: its decoder cannot start")


def shift_right(target: torch.Tensor, start: int) -> torch.Tensor:
    """The decoder's teacher-forced input for `target` (batch, t): the start token, then the
    target without its last token.

    >>> shift_right(torch.tensor([[7, 8, 9]]), 0)
    tensor([[0, 7, 8]])
    """
    first = torch.full_like(target[:, :1], start)
    return torch.cat([first, target[:, :-1]], dim=1)


def model_inputs(model, ids: torch.Tensor) -> dict:
    """The forward arguments that run `ids` (batch, n) through `model`: for an encoder-decoder
    (is_seq2seq), the first n // 2 tokens as the encoder's input and the rest teacher-forced
    into the decoder; for any other model, input_ids alone."""
    if not is_seq2seq(model):
        return {"input_ids": ids}
    half = ids.shape[1] // 2
    return {"input_ids": ids[:, :half], "decoder_input_ids": shift_right(ids[:, half:], decoder_start(model))}


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after any text: (prefix, suffix).
    BERT's WordPiece: ([CLS], [SEP]); T5: ([], [</s>]); BART: ([<s>], [</s>])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []
