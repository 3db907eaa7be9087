"""A Hugging Face tokenizer as GGUF metadata, for a model that did not come from a GGUF file.

llama.cpp tokenizes by the metadata alone: the tokens, their types, the merges, the special
tokens and the name of its pre-tokenizer (`tokenizer.ggml.pre`), which selects the regular
expressions it splits text with before the merges. That name cannot be read from a Hugging Face
tokenizer; llama.cpp's own converter recognises it by hashing a test string's tokens. Here it is
recognised by the tokenizer's declared pre-tokenizer instead, compared with the expressions
llama.cpp uses for each name (src/llama-vocab.cpp):

    gpt-2      byte-level, GPT-2's expression
    smollm     single digits split off, then byte-level with GPT-2's expression
    llama-bpe  Llama 3's expression, then byte-level without its own
    qwen2      Qwen2's expression (single digits), then byte-level without its own

Byte-level BPE tokenizers with one of these pre-tokenizers are written; any other tokenizer
(SentencePiece's Llama 2 and Mistral, WordPiece, unknown expressions) is refused in one line.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from engine.errors import UserError

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_BYTE_LEVEL_ONLY = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


# llama.cpp's name for each pre-tokenizer it splits text the same way as (keys: the declared
# steps, each reduced to the fields that decide the split)
PRE = {
    "gpt-2": [_BYTE_LEVEL],
    "smollm": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL],
    "llama-bpe": [_split(_LLAMA3), _BYTE_LEVEL_ONLY],
    "qwen2": [_split(_QWEN2), _BYTE_LEVEL_ONLY],
}
_DECIDING = {"ByteLevel": ("type", "add_prefix_space", "use_regex"), "Digits": ("type", "individual_digits"),
             "Split": ("type", "pattern", "behavior", "invert")}


def _steps(pre: dict | None) -> list[dict] | None:
    if pre is None:
        return None
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    out = []
    for s in steps:
        keys = _DECIDING.get(s.get("type"))
        if keys is None:
            return None
        out.append({k: s.get(k) for k in keys})
    return out


def pre_name(tokenizer_json: dict) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE tokenizer.json, or UserError naming
    what llama.cpp would split differently."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or \
            (tokenizer_json.get("decoder") or {}).get("type") != "ByteLevel":
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else model.get("type", "unknown")
        raise UserError(f"--format gguf: the tokenizer is {kind}; only byte-level BPE tokenizers (GPT-2, Llama 3, "
                        "Qwen2, SmolLM) are written from a Hugging Face model (or use --format compressed-tensors)")
    if tokenizer_json.get("normalizer") is not None:
        raise UserError("--format gguf: the tokenizer normalizes its text first, which llama.cpp's byte-level BPE "
                        "does not (use --format compressed-tensors)")
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    for name, known in PRE.items():
        if steps == known:
            return name
    declared = json.dumps(tokenizer_json.get("pre_tokenizer"))[:80]
    raise UserError(f"--format gguf: llama.cpp has no pre-tokenizer known to split text as this tokenizer's "
                    f"({declared}...); known: {', '.join(PRE)} (or use --format compressed-tensors)")


def spec_of(tokenizer) -> dict:
    """The tokenizer's tokenizer.json, as a dict."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("--format gguf: the model's tokenizer has no tokenizer.json (a fast tokenizer) to write from")
    return json.loads(tokenizer.backend_tokenizer.to_str())


def write(writer, tokenizer, vocab_size: int) -> str:
    """Add the tokenizer's GGUF metadata to `writer` (a gguf.GGUFWriter); returns the
    pre-tokenizer's name. Token ids the tokenizer does not use, up to the model's `vocab_size`,
    are written as unused padding tokens, as llama.cpp's converter does."""
    import gguf

    spec = spec_of(tokenizer)
    pre = pre_name(spec)
    by_id = {i: t for t, i in spec["model"]["vocab"].items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    by_id.update({i: a["content"] for i, a in added.items()})
    if max(by_id) >= vocab_size:
        raise UserError(f"--format gguf: the tokenizer has token id {max(by_id)}, beyond the model's "
                        f"{vocab_size} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(gguf.TokenType.NORMAL if i not in added else
                     gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    with tempfile.TemporaryDirectory() as folder:  # merges, special ids and the chat template, as gguf reads them
        tokenizer.save_pretrained(folder)
        special = gguf.SpecialVocab(Path(folder), load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(writer, quiet=True)
    return pre
