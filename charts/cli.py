"""`python -m charts`: the command line with the command that draws, `report`, beside every
command of `python -m engine` (engine.cli, which never imports a UI library: this layer adds its
command to that parser).

    python -m charts report MODEL [recipe options] --out report.html [--quick] [--speed] [--sweep CSV]

`report` writes one self-contained HTML file of a recipe on a model, for the people who decide.
The numbers are the run report's (engine.drivers.run_report, what `run --json` prints); `--speed` adds the
speed report (engine.speed.measure), `--sweep` the trade-off chart of a CSV that `sweep` wrote. The page
is drawn by charts.report with the app's figures (plotly, no Streamlit), so the app's "Download
report" and this command give the same file.
"""
from __future__ import annotations

import sys
from pathlib import Path

from engine import cli
from engine.cli.options import eval_text, model_args, open_explorer, out_path, recipe_args, recipe_from, with_preset
from engine.errors import UserError

PROG = "python -m charts"


def cmd_report(args):
    from charts import report as html_report
    from engine.drivers import run_report as report
    from engine.glossary import HIGHER_IS_BETTER
    from engine.studies.sweep import read_csv

    out = out_path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"report: --out {args.out!r} should end in .html")
    sweep = None
    if args.sweep:
        rows = read_csv(args.sweep)
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
        from engine.speed.measure import SpeedSettings, measure

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
    p.add_argument("--speed", action="store_true", help="also measure speed (engine.speed.measure's defaults; a minute or more)")
    p.add_argument("--sweep", metavar="CSV", help="draw the trade-off chart of this CSV, written by `sweep`")
    p.set_defaults(fn=cmd_report)


def main(argv=None) -> int:
    """engine.cli.main with `report` added (its exit codes and one-line errors)."""
    return cli.main(argv, extra=(add_parser,), prog=PROG)
