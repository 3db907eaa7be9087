"""`compare`: candidates against a reference model, token by token, with llama.cpp's KL statistics
(engine.studies.ranking), the reference's outputs computed once for all of them."""
from __future__ import annotations

import json

from engine.cli import cluster_options
from engine.cli.options import Progress, eval_text, open_explorer, out_path
from engine.errors import UserError
from engine.studies.ranking import EXPORTS, check_same_model, compare, read_candidate
from engine.studies.results_file import ResultsFile


def cmd_compare(args):
    candidates = [read_candidate(c, args.reference) for c in args.candidates]
    text, name = eval_text(args)
    ex = open_explorer(args, args.reference)
    if ex.kind != "causal-lm":
        raise UserError(f"compare: {args.reference!r} is a {ex.kind} model; compare takes causal language models only")
    for cand in candidates:
        check_same_model(ex, cand, args.trust_remote_code)
    results = args.out and ResultsFile.open(out_path(args.out), [c.name for c in candidates], args.resume)
    if args.resume and not results:
        raise UserError("--resume: needs --out (the results file to resume from)")
    runner = cluster_options.runner(args, args.reference, explorer=ex)
    bar = Progress(f"compare {args.reference}", "candidate")
    arrived = [0]

    def keep(key, result, worker):
        arrived[0] += 1
        bar(arrived[0] + len(results.done if results else ()), len(candidates), f"{worker}: {result['row']['name']}")
        if results:
            results.add(key, result)

    try:
        out = compare(ex, candidates, args.quick, text, name, args.reference, args.trust_remote_code,
                      runner=runner, done=results and results.done, on_result=keep)
    finally:
        bar.close()
        runner.close()
    if results:
        results.finish([c.name for c in candidates])
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
                        "any other GGUF file of the reference's architecture and vocabulary (scored as a model "
                        "of its own, its bytes those of its tensors), or the reference itself")
    c.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    c.add_argument("--trust-remote-code", action="store_true", help="allow code from the model's repository")
    c.add_argument("--eval-text", help="UTF-8 text file to compare on instead of the packaged text")
    c.add_argument("--quick", action="store_true", help="on the first estimate's windows only (4 of the 16, evenly spaced)")
    c.add_argument("--json", action="store_true", help="print one JSON object, the candidates by mean KL")
    c.add_argument("--out", help="JSON-lines file to write, a line as each candidate is scored (for --resume)")
    cluster_options.cluster_args(c)
    c.set_defaults(fn=cmd_compare)
