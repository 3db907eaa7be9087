"""`compare`: candidates against a reference model, token by token, with llama.cpp's KL statistics
(engine.quality.divergence), the reference's outputs computed once for all of them."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from engine.cli.options import eval_text, open_explorer
from engine.errors import UserError
from engine.recipe.recipe import Recipe, RecipeError

log = logging.getLogger(__name__)

EXPORTS = "an explorer export folder, a GGUF file or a compressed-tensors folder written by `export`"


@dataclass(frozen=True)
class Candidate:
    """A candidate as given: `kind` 'recipe' (applied to the reference), 'reference' (the
    reference itself), or an export's format ('explorer', 'gguf', 'compressed-tensors') with the
    source model it names."""

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
    if not path.is_file():
        raise UserError(f"compare: candidate {name!r} is not a recipe JSON file nor {EXPORTS}")
    try:
        return Candidate(name, "recipe", Recipe.from_json(path.read_text(encoding="utf-8")))
    except UnicodeDecodeError:
        raise UserError(f"compare: candidate {name!r} is not a recipe JSON file nor {EXPORTS}") from None
    except RecipeError as e:
        raise RecipeError(f"compare: candidate {name}: {e}") from None


def check_same_model(ex, cand: Candidate, trust_remote_code: bool = False) -> None:
    """Refuse, in one line naming the difference, an export of another model than the reference's."""
    from engine.models.loading import open_config
    from engine.quality.causal_reference import model_difference

    loaded = ex.loaded
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
            name: str | None = None, reference: str | None = None) -> dict:
    """The comparison's report: {'reference': {'name', 'bytes', 'bits_per_weight', 'perplexity',
    'perplexity_low', 'perplexity_high'}, 'candidates': [{'name', 'format', 'recipe', 'bytes',
    'bits_per_weight', and divergence.summarize's keys}, ...] by mean KL, 'protocol'}."""
    from engine.quality.causal_reference import CausalReference
    from engine.quality.divergence import summarize
    from engine.storage import detect as formats

    ref = CausalReference.from_text(ex.loaded, text, name, quick=quick)
    rows = []
    for cand in candidates:  # one workspace at a time, let go before the next
        log.info("compare: scoring %s", cand.name)
        stats, memory = _score(ex, ref, cand, formats)
        rows.append({"name": cand.name, "format": cand.kind,
                     "recipe": cand.recipe.describe() if cand.recipe else None,
                     **weights(ex, memory), **summarize(stats, ref.n_windows)})
    rows.sort(key=lambda r: r["kl"]["mean"])
    return {"reference": {"name": reference or ex.loaded.ref, **weights(ex), **ref.summary()},
            "candidates": rows, "protocol": {**ref.protocol(), "quick": quick}}


def _score(ex, ref, cand: Candidate, formats):
    """(the candidate's per-token statistics against `ref`, its memory report or None for the reference)."""
    if cand.kind == "reference":
        return ref.score(ex.loaded.model), None
    work = ex.workspace()
    applied = work.apply(cand.recipe) if cand.kind == "recipe" else formats.load_into(work, cand.name)
    return ref.score(work.model), applied.memory


def cmd_compare(args):
    candidates = [read_candidate(c, args.reference) for c in args.candidates]
    text, name = eval_text(args)
    ex = open_explorer(args, args.reference)
    if ex.kind != "causal-lm":
        raise UserError(f"compare: {args.reference!r} is a {ex.kind} model; compare takes causal language models only")
    for cand in candidates:
        check_same_model(ex, cand, args.trust_remote_code)
    out = compare(ex, candidates, args.quick, text, name, args.reference)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_table(out)


def print_table(out: dict) -> None:
    """The comparison as text: the reference, then a row per candidate (KL in nats; same top
    and delta p in %)."""
    r, p = out["reference"], out["protocol"]
    print(f"reference {r['name']}: perplexity {r['perplexity']:.4f} (95%: {r['perplexity_low']:.4f} to "
          f"{r['perplexity_high']:.4f}), {r['bytes']:,} bytes, {r['bits_per_weight']:.2f} bits per weight")
    print(f"{p['tokens_scored']:,} tokens in {p['windows']} windows of {p['seq_len']} of {p['text']}"
          + (" [first estimate]" if p["quick"] else ""))
    print(f"{p['kl']}")
    numbers = ("KL mean", "± se", "median", "p99", "p99.9", "max", "same top", "Δp mean", "p1", "p5", "p95", "p99")
    width = max([len("candidate")] + [len(c["name"]) for c in out["candidates"]])
    print(f"{'candidate':<{width}} {'bytes':>12} {'bpw':>6} {'perplexity':>11} "
          + " ".join(f"{h:>{9 if i < 7 else 10}}" for i, h in enumerate(numbers)))
    for c in out["candidates"]:
        kl, dp = c["kl"], c["delta_p"]
        cells = [_small(kl[k]) for k in ("mean", "mean_stderr", "median", "p99", "p999", "max")]
        cells += [f"{100 * c['same_top']:>8.3f}%"] + [_small(100 * dp[k]) + "%" for k in ("mean", "p1", "p5", "p95", "p99")]
        print(f"{c['name']:<{width}} {c['bytes']:>12,} {c['bits_per_weight']:>6.2f} {c['perplexity']:>11.4f} "
              + " ".join(cells))


def _small(x: float) -> str:
    """`x` in 9 characters (8 for a percentage): fixed point, or in powers of ten where that would show only zeros."""
    return f"{x:>9.6f}" if x == 0 or abs(x) >= 1e-4 else f"{x:>9.2e}"


def add_parser(sub) -> None:
    c = sub.add_parser("compare", help="candidates (recipes or exports) against a reference model, token by token, "
                                       "with llama.cpp's KL statistics")
    c.add_argument("reference", help="the reference: a causal language model, any source the engine loads (alias, "
                                      "local folder, hub id, GGUF file)")
    c.add_argument("candidates", nargs="+", metavar="CANDIDATE",
                   help=f"a recipe JSON file (applied to the reference), {EXPORTS} from the reference's model, "
                        "or the reference itself")
    c.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    c.add_argument("--trust-remote-code", action="store_true", help="allow code from the model's repository")
    c.add_argument("--eval-text", help="UTF-8 text file to compare on instead of the packaged text")
    c.add_argument("--quick", action="store_true", help="on the first estimate's windows only (4 of the 16, evenly spaced)")
    c.add_argument("--json", action="store_true", help="print one JSON object, the candidates by mean KL")
    c.set_defaults(fn=cmd_compare)
