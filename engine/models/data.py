"""Evaluation data, read from gensim's packaged test data; nothing is copied into this repo.

- lee_background.cor: 300 news articles (held-out text for causal-LM perplexity);
- lee.cor + similarities0-1.txt: 50 documents and their human pairwise similarity scores
  (Lee, Pincombe & Welsh 2005);
- pang_lee_polarity.cor: 200 movie-review sentences labelled positive / negative
  (Pang & Lee).
"""
from __future__ import annotations

import functools
from pathlib import Path

from engine.errors import UserError


def gensim_file(name: str) -> Path:
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise UserError("evaluation data needs the package gensim (run `make install`)") from None
    path = Path(datapath(name))
    if not path.exists():
        raise UserError(f"gensim's test data has no {name} (reinstall gensim)")
    return path


@functools.cache
def lee_background() -> tuple[str, ...]:
    """The 300 news articles, one per line."""
    return tuple(_lines(gensim_file("lee_background.cor")))


@functools.cache
def lee_documents() -> tuple[str, ...]:
    return tuple(_lines(gensim_file("lee.cor")))


@functools.cache
def lee_similarity_pairs() -> tuple[tuple[int, int, float], ...]:
    """(i, j, human score) for every document pair i < j of the 50 Lee documents.

    The file is a 50 x 50 matrix whose upper triangle holds the mean human rating in [0, 1].
    """
    rows = [[float(v) for v in line.split()] for line in _lines(gensim_file("similarities0-1.txt"))]
    n = len(rows)
    return tuple((i, j, rows[i][j]) for i in range(n) for j in range(i + 1, n))


@functools.cache
def polarity() -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(sentences, labels) with label 1 for positive, 0 for negative."""
    texts, labels = [], []
    for line in _lines(gensim_file("pang_lee_polarity.cor")):
        tag, _, text = line.partition(" ")
        if tag not in ("__label__pos", "__label__neg"):
            continue
        texts.append(text.strip())
        labels.append(1 if tag == "__label__pos" else 0)
    return tuple(texts), tuple(labels)


def _lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # lee.cor is Latin-1 (a pound sign)
        text = raw.decode("latin-1")
    return [s.strip() for s in text.splitlines() if s.strip()]


def read_user_text(path: str) -> str:
    """A user's evaluation text: UTF-8, not empty, not binary. Raises UserError otherwise."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--eval-text: no such file {path!r}")
    raw = p.read_bytes()
    if b"\x00" in raw:
        raise UserError(f"--eval-text: {path!r} looks binary (it has NUL bytes); give UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--eval-text: {path!r} is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise UserError(f"--eval-text: {path!r} is empty")
    return text
