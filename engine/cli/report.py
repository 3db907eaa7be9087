"""`report`: one self-contained HTML file of a recipe on a model, for the people who decide.

The numbers are the run report's (engine.report, what `run --json` prints); `--speed` adds the
speed report (engine.speed), `--sweep` the trade-off chart of a CSV that `sweep` wrote. The page
is drawn by ui.report with the app's figures (plotly, no Streamlit), so the app's "Download
report" and this command give the same file.
"""
from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

from ..errors import UserError
from .options import eval_text, model_args, open_explorer, out_path, recipe_args, recipe_from, with_preset


def _number(text: str):
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def read_sweep(path: str) -> list[dict]:
    """The points of a CSV written by `sweep` (the recipe's columns, label, bytes and metrics)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    except OSError as e:
        raise UserError(f"--sweep: cannot read {path!r} ({e.strerror})") from None
    if not rows or "compressed_bytes" not in rows[0] or "label" not in rows[0]:
        raise UserError(f"--sweep: {path!r} is not a CSV written by `python -m engine sweep`")
    for r in rows:
        r["estimate_only"] = str(r.get("estimate_only")).lower() == "true"
        if any(isinstance(v, float) and math.isnan(v) for v in r.values()):
            raise UserError(f"--sweep: {path!r} has a point without a number ({r['label']})")
    return rows


def cmd_report(args):
    from ui import report as html_report

    from .. import report
    from ..glossary import HIGHER_IS_BETTER

    out = out_path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"report: --out {args.out!r} should end in .html")
    sweep = None
    if args.sweep:
        rows = read_sweep(args.sweep)
        metrics = [m for m in HIGHER_IS_BETTER if all(m in r for r in rows)]
        if not metrics:
            raise UserError(f"--sweep: {args.sweep!r} has no quality metric the explorer measures")
        sweep = {"rows": rows, "metric": metrics[0]}
    recipe = recipe_from(args)
    text, name = eval_text(args)
    ex = open_explorer(args)
    recipe = with_preset(args, recipe, ex)
    run = report.in_memory(ex, recipe, args.model, args.quick, text, name)
    speed = None
    if args.speed:
        from ..speed import SpeedSettings, measure

        speed = measure(ex, recipe, SpeedSettings())
    Path(out).write_text(html_report.html(run, speed, sweep), encoding="utf-8")
    print(f"wrote {out} ({Path(out).stat().st_size / 2**20:.1f} MiB, self-contained)", file=sys.stderr)


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of a recipe: memory, quality, speed, trade-offs")
    model_args(p)
    recipe_args(p, preset=True)
    p.add_argument("--out", required=True, help="the HTML file to write")
    p.add_argument("--quick", action="store_true", help="the first estimate of quality only")
    p.add_argument("--eval-text", help="UTF-8 text file to evaluate on instead of the packaged text")
    p.add_argument("--speed", action="store_true", help="also measure speed (engine.speed's defaults; a minute or more)")
    p.add_argument("--sweep", metavar="CSV", help="draw the trade-off chart of this CSV, written by `sweep`")
    p.set_defaults(fn=cmd_report)
