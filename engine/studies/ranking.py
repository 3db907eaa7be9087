"""Candidates ranked against a reference model, token by token, with llama.cpp's KL statistics
(engine.quality.divergence), the reference's outputs computed once for all of them: what
`python -m engine compare` and the Compare page report.

A candidate is a recipe (applied to the reference), a file `export` wrote from the reference's
model, any other GGUF file of the same model (a model of its own, its bytes from the file), or the
reference itself.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError
from engine.recipe.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)

EXPORTS = "an explorer export folder, a GGUF file or a compressed-tensors folder written by `export`"
GGUF_MODEL = "gguf-model"  # a GGUF file not written by `export` (no explorer.source): a model of its own
# what a GGUF model must share with the reference to be scored against it, token by token
SAME_VOCABULARY = ("model_type", "vocab_size")


@dataclass(frozen=True)
class Candidate:
    """A candidate as given: `kind` 'recipe' (applied to the reference), 'reference' (the
    reference itself), an export's format ('explorer', 'gguf', 'compressed-tensors') with the
    source model it names, or GGUF_MODEL (any other GGUF file, loaded as a model of its own)."""

    name: str
    kind: str
    recipe: Recipe | None = None
    source: str | None = None


def read_candidate(name: str, reference: str) -> Candidate:
    """What the argument `name` is, read before any model loads; anything else is refused in one line."""
    from engine.storage import detect as formats

    if name == reference:
        return Candidate(name, "reference")
    kind = formats.kind(name)
    if kind:
        source, recipe = formats.source_of(name)
        return Candidate(name, kind, recipe, source)
    path = Path(name)
    if not path.exists():
        raise UserError(f"compare: candidate {name!r}: no such file or folder")
    if gguf_file_of(name) is not None:
        return Candidate(name, GGUF_MODEL)
    if not path.is_file():
        raise UserError(f"compare: candidate {name!r} is not a recipe JSON file nor {EXPORTS}")
    try:
        return Candidate(name, "recipe", Recipe.from_json(path.read_text(encoding="utf-8")))
    except UnicodeDecodeError:
        raise UserError(f"compare: candidate {name!r} is not a recipe JSON file nor {EXPORTS}") from None
    except RecipeError as e:
        raise RecipeError(f"compare: candidate {name}: {e}") from None


def gguf_file_of(name: str) -> Path | None:
    """The GGUF file `name` is (or the one a folder without config.json holds), or None;
    a folder of several is refused in one line."""
    from engine.models import gguf_source

    try:
        return gguf_source.gguf_in(name)
    except UserError as e:
        raise UserError(f"compare: candidate {name!r}: {e}") from None


def gguf_weights(name: str) -> dict:
    """{'bytes', 'bits_per_weight'} of a GGUF file, from the file itself: the bytes of its tensor
    data (each tensor's n_bytes) and 8 x those bytes / the number of values they hold."""
    from engine.models import gguf_source

    tensors = gguf_source.reader(gguf_file_of(name)).tensors
    n, values = sum(int(t.n_bytes) for t in tensors), sum(int(t.n_elements) for t in tensors)
    return {"bytes": n, "bits_per_weight": 8 * n / values}


def row_name(cand: Candidate) -> str:
    """The candidate's name in the report: a GGUF model's file name, else the name as given."""
    return gguf_file_of(cand.name).name if cand.kind == GGUF_MODEL else cand.name


def check_same_model(ex, cand: Candidate, trust_remote_code: bool = False) -> None:
    """Refuse, in one line naming the difference, an export of another model than the reference's,
    or a GGUF model of another architecture or vocabulary."""
    from engine.models.loading import open_config
    from engine.quality.causal_reference import model_difference

    loaded = ex.loaded
    if cand.kind == GGUF_MODEL:  # converted once (engine.models.gguf_source), then read from the cache
        try:
            config = open_config(cand.name, trust_remote_code)[0]
        except UserError as e:
            raise UserError(f"compare: candidate {cand.name!r} cannot be loaded ({e})") from None
        diff = model_difference(loaded.model.config, config, SAME_VOCABULARY)
        if diff:
            raise UserError(f"compare: candidate {cand.name!r} is a model the reference cannot be compared with "
                            f"token by token: {diff}")
        return
    if cand.source is None or cand.source in (loaded.ref, str(loaded.source)):
        return
    try:
        config = open_config(cand.source, trust_remote_code)[0]
    except UserError as e:
        raise UserError(f"compare: candidate {cand.name!r} names source model {cand.source!r}, "
                        f"which cannot be read ({e})") from None
    diff = model_difference(loaded.model.config, config)
    if diff:
        raise UserError(f"compare: candidate {cand.name!r} is of another model than the reference: {diff}")


def weights(ex, memory=None) -> dict:
    """{'bytes', 'bits_per_weight'}: the bytes of the weights as the memory report counts them
    (the reference's at fp16), and 8 x those bytes / the model's parameters."""
    n = memory.compressed_bytes if memory is not None else 2 * ex.total_params
    return {"bytes": n, "bits_per_weight": 8 * n / ex.total_params}


def compare(ex, candidates: list[Candidate], quick: bool = False, text: str | None = None,
            name: str | None = None, reference: str | None = None, trust_remote_code: bool = False,
            progress=None, runner=None, done: dict | None = None, on_result=None) -> dict:
    """The comparison's report: {'reference': {'name', 'bytes', 'bits_per_weight', 'perplexity',
    'perplexity_low', 'perplexity_high'}, 'candidates': [{'name', 'format', 'recipe', 'bytes',
    'bits_per_weight', and divergence.summarize's keys}, ...] by mean KL, 'protocol'}.
    `progress(k, n, name)`, when given, is called at the start (k 0: the reference's outputs come
    first), then with k = 1..n as candidate k is next (k = n + 1: all scored). The candidates are
    scored on `runner` (default: this process), each worker computing the reference's outputs once;
    `done` (results already had, by candidate name) and `on_result(name, result, worker)` are
    engine.studies.runner.gather's."""
    from engine.studies.runner import Local, gather

    tell = progress or (lambda k, n, what: None)
    n, names = len(candidates), [row_name(c) for c in candidates]
    tell(0, n, "the reference")
    tell(1, n, names[0]) if n else None
    arrived = [0]

    def next_one(key, result, worker):
        arrived[0] += 1
        if on_result:
            on_result(key, result, worker)
        k = arrived[0] + 1
        tell(k, n, names[k - 1] if k <= n else "")

    jobs = {c.name: (c, quick, text, name, trust_remote_code) for c in candidates}
    if len(jobs) < n:
        twice = next(c.name for c in candidates if [d.name for d in candidates].count(c.name) > 1)
        raise UserError(f"compare: candidate {twice!r} is given twice")
    got = gather(runner or Local(ex), score_task, jobs, done, next_one)
    if not got:
        raise UserError("compare: no candidate")
    first = next(iter(got.values()))
    rows = sorted((r["row"] for r in got.values()), key=lambda r: r["kl"]["mean"])
    return {"reference": {"name": reference or ex.loaded.ref, **weights(ex), **first["reference"]},
            "candidates": rows, "protocol": {**first["protocol"], "quick": quick}}


def score_task(worker, job) -> dict:
    """A runner's task (engine.studies.runner): one candidate scored against the reference's
    outputs, computed once per worker (kept in its memo): {'row', 'reference', 'protocol'}."""
    from engine.quality.causal_reference import CausalReference
    from engine.quality.divergence import summarize
    from engine.storage import detect as formats

    cand, quick, text, name, trust_remote_code = job
    ex = worker.explorer
    key = ("causal reference", quick, text, name)
    if key not in worker.memo:
        worker.memo.clear()  # one reference at a time: its outputs are large
        worker.memo[key] = CausalReference.from_text(ex.loaded, text, name, quick=quick)
    ref = worker.memo[key]
    log.info("compare: scoring %s", cand.name)
    stats, size = _score(worker, ref, cand, formats, trust_remote_code)
    row = {"name": row_name(cand), "format": cand.kind, "recipe": cand.recipe.describe() if cand.recipe else None,
           **size, **summarize(stats, ref.n_windows)}
    return {"row": row, "reference": ref.summary(), "protocol": ref.protocol()}


def _score(worker, ref, cand: Candidate, formats, trust_remote_code: bool = False):
    """(the candidate's per-token statistics against `ref`, its {'bytes', 'bits_per_weight'})."""
    ex = worker.explorer
    if cand.kind == "reference":
        return ref.score(ex.loaded.model), weights(ex)
    if cand.kind == GGUF_MODEL:  # a model of its own, loaded as a source model is
        from engine.models.loading import load

        model = load(cand.name, str(ex.loaded.device), trust_remote_code).model  # let go once scored
        return ref.score(model), gguf_weights(cand.name)
    work = ex.workspace()  # a fresh one per candidate, let go before the next
    applied = work.apply(cand.recipe) if cand.kind == "recipe" else formats.load_into(work, cand.name)
    return ref.score(work.model), weights(ex, applied.memory)
