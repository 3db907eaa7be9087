"""Errors and how they reach a user: always on one line.

A `UserError` is bad input or an unusable environment: the command line prints its message and
exits 2; the app shows it in an error box. Anything else that fails is unexpected: the command
line prints `failure(what, e)` and exits 1 (`--debug` prints the traceback instead), and the app
shows the same line in an error box and keeps the traceback in the server's log.
"""


class UserError(Exception):
    """Bad input or an unusable environment, described in one line."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (at most 300 characters).

    >>> one_line(ValueError("bad\\n  value"))
    'bad value'
    """
    text = " ".join(str(e).split())
    return (text[:297] + "...") if len(text) > 300 else (text or type(e).__name__)


def failure(what: str, e: BaseException) -> str:
    """One line naming what failed and how: the exception's type and the first line of its message.

    >>> failure("run", RuntimeError("out of memory\\nat layer 3"))
    'run failed: RuntimeError: out of memory'
    """
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return f"{what} failed: {type(e).__name__}" + (f": {one_line(first)}" if first else "")
