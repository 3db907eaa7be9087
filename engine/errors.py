"""Errors meant for the user: the command line prints their message on one line and exits 2;
the app shows it in an error box. Anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """Bad input or an unusable environment, described in one line."""
