"""Building a model's modules one at a time in the process, quietly for the thread that builds.

    with building():                      # from_pretrained, from_config
        model = AutoModel.from_pretrained(folder)

transformers builds under process-wide settings, so builds take turns; its progress bars and
advice are silenced for the building thread only, through a log filter and a progress-bar hook
installed once (nothing process-wide changes per build).
"""
from __future__ import annotations

import contextlib
import logging
import threading

_building = threading.RLock()


@contextlib.contextmanager
def building():
    """Build a model's modules (from_pretrained, from_config), quietly, one build at a time in
    the process: transformers builds under process-wide settings (the default dtype, torch's
    init functions patched, the meta device), so two builds at once in two threads can leave a
    model with parameters on the meta device ("Cannot copy out of meta tensor")."""
    with _building, quiet():
        yield


_quiet_here = threading.local()  # .on: this thread is loading a model
_quiet_lock = threading.Lock()
_quiet_installed = False


@contextlib.contextmanager
def quiet():
    """Silence the progress bars and advice (log records below ERROR) that transformers gives
    while this thread loads, and only this thread's: other threads, loading or not, keep theirs.
    Nothing process-wide changes per call (no redirected stderr, no verbosity flipped): a log
    filter and a progress-bar hook are installed once and read a per-thread flag, so loads in
    several threads at once (the app's sessions, its preload) cannot leave the process's
    stderr or settings behind them."""
    _install_quiet()
    before = getattr(_quiet_here, "on", False)
    _quiet_here.on = True
    try:
        yield
    finally:
        _quiet_here.on = before


class _QuietFilter(logging.Filter):
    """Drops transformers' records below ERROR logged by a thread that is loading (`quiet`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not getattr(_quiet_here, "on", False)


def _install_quiet() -> None:
    """Once per process: the filter on transformers' log handlers, and a hook that turns off
    its progress bars (tqdm's `disable`) in a thread that is loading."""
    global _quiet_installed
    with _quiet_lock:
        if _quiet_installed:
            return
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger()  # configures transformers' own handler, if not yet done
        for handler in logging.getLogger("transformers").handlers:
            handler.addFilter(_QuietFilter())
        previous = None

        def hook(factory, args, kwargs):
            if getattr(_quiet_here, "on", False):
                kwargs = {**kwargs, "disable": True}
            return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

        previous = hf_logging.set_tqdm_hook(hook)
        _quiet_installed = True
