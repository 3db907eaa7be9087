"""Every example in the engine's docstrings (a `>>>` line) runs and gives the value it shows.

The modules are found by reading engine/**/*.py for `>>>` lines, so a new example is run
without being listed here; each module's examples must all be run (an example the doctest
finder cannot reach, in a nested function say, fails its module's test), and there must be
at least MIN_EXAMPLES of them in all, so that this file cannot pass by finding none.
"""
import doctest
import importlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROMPT = re.compile(r"^[ \t]*>>>", re.MULTILINE)
MIN_EXAMPLES = 45  # the examples in the engine's docstrings when this test was written


def modules_with_examples() -> dict[str, int]:
    """Module name -> the `>>>` lines in its source, for each engine module that has any."""
    found = {}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        n = len(PROMPT.findall(path.read_text(encoding="utf-8")))
        if n:
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = n
    return found


EXAMPLES = modules_with_examples()


@pytest.mark.parametrize("module", sorted(EXAMPLES), ids=lambda m: f"{m}:{EXAMPLES[m]}")
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    runner = doctest.DocTestRunner(verbose=False)
    out = io.StringIO()
    for test in doctest.DocTestFinder(exclude_empty=True).find(mod):
        runner.run(test, out=out.write)
    assert runner.failures == 0, f"{runner.failures} of {runner.tries} examples in {module} failed:\n{out.getvalue()}"
    assert runner.tries == EXAMPLES[module], (
        f"{module}: {EXAMPLES[module]} `>>>` lines in its source, {runner.tries} examples run "
        "(an example out of the doctest finder's reach: a nested function's docstring, a plain string)")


def test_examples_found(capsys):
    total = sum(EXAMPLES.values())
    with capsys.disabled():
        print(f"\n{total} docstring examples in {len(EXAMPLES)} engine modules")
    assert total >= MIN_EXAMPLES, f"only {total} docstring examples found under engine/ (at least {MIN_EXAMPLES})"
