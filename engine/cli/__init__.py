"""`python -m engine`: a thin command line over the engine's API. One module per group of
commands (info: models, inspect, bench; run: run, export; study: sweep, sensitivity, plan;
fit); each parses its arguments, calls the engine and prints."""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from . import fit, info, run, study


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m engine", description="Compress a real transformer and measure it honestly.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info.add_models(sub)
    info.add_inspect(sub)
    run.add_parsers(sub)
    study.add_parsers(sub)
    fit.add_parser(sub)
    info.add_bench(sub)
    return p


def main(argv=None) -> int:
    """Run the command in `argv` (default sys.argv[1:]); 0 when done, 2 after bad input (its
    message on one line of stderr), 130 when interrupted."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("engine").setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0
