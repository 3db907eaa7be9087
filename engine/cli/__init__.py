"""`python -m engine`: a thin command line over the engine's API. One module per group of
commands (info: info, models, inspect, bench; run: run, export; study: sweep, sensitivity, plan;
fit; speed; candidates: compare); each parses its arguments, calls the engine and prints. Whatever fails ends with one line
on stderr: bad input exits 2, anything unexpected 1 (`--debug`: with its traceback). A layer above
adds its own commands through `extra` (charts.cli adds `report`, which draws with the app's figures):
the engine never imports a UI library."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback

from engine.cli import candidates, fit, info, run, speed, study
from engine.errors import UserError, failure


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UserError(f"{self.prog}: {message}")


DEBUG_HELP = "on an unexpected failure, print its traceback (default: one line naming what failed)"


def build_parser(extra=(), prog: str = "python -m engine") -> argparse.ArgumentParser:
    """The parser of every command; `extra`: functions adding more (each given the subparsers)."""
    p = _Parser(prog=prog, description="Compress a real transformer and measure it honestly.")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info.add_info(sub)
    info.add_models(sub)
    info.add_inspect(sub)
    run.add_parsers(sub)
    study.add_parsers(sub)
    fit.add_parser(sub)
    speed.add_parser(sub)
    candidates.add_parser(sub)
    info.add_bench(sub)
    for add in extra:
        add(sub)
    for command in sub.choices.values():  # also after the command; SUPPRESS keeps a --debug given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return p


def main(argv=None, extra=(), prog: str = "python -m engine") -> int:
    """Run the command in `argv` (default sys.argv[1:]); 0 when done, 2 after bad input (its
    message on one line of stderr), 1 after an unexpected failure (one line naming the command
    and the exception; with --debug, its traceback), 130 when interrupted."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("engine").setLevel(logging.INFO)
    args = None
    try:
        args = build_parser(extra, prog).parse_args(argv)
        args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 -- a bug or an environment the engine did not foresee
        if getattr(args, "debug", False):
            traceback.print_exc()
        else:
            what = args.command if args else prog
            print(f"error: {failure(what, e)} (--debug shows the traceback)", file=sys.stderr)
        return 1
    return 0
