"""The command line, run as the tests run it: `python -m engine` in a new interpreter, or
engine.cli.main in this process with its output captured."""
import contextlib
import io
import json
import os
import subprocess
import sys

from engine import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def engine(*args, env=None):
    """`python -m engine ARGS` in a new interpreter."""
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900)


def main(*args, run=None):
    """engine.cli.main(ARGS) in this process (or `run`, charts.cli.main for the command that draws):
    (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = (run or cli.main)(list(args))
    return code, out.getvalue(), err.getvalue()


def run_json(*args):
    code, out, err = main("run", *args, "--json")
    assert code == 0, err
    return json.loads(out)  # exactly one JSON object on stdout
