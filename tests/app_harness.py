"""Streamlit's AppTest for this app, whose `st.navigation` pages live in `pages/`.

Streamlit keeps one process-wide flag, `PagesManager.uses_pages_directory`. A new PagesManager
sets it, when unset, to whether a `pages/` folder lies beside the main script; `st.navigation`
sets it to False. While it is True, the script runner does not run the main script: it takes
the older multipage path (`_mpa_v1` in streamlit/runtime/scriptrunner/script_runner.py), which
lists app.py and every `pages/*.py` as pages and runs the one asked for, so a run asked for
`pages/explore.py` runs that file alone, without the sidebar and context that app.py prepares.

Under `streamlit run` the flag is set once per process, and the first run of app.py calls
`st.navigation`, which turns it off for good. AppTest sets it back to None before every run
(`AppTest._run`), so with `pages/` each run of a page would take the older path.
`state.page_start()` mends a session's first such run (what a fresh server sees), not the later
ones, which a server never sees. `app_test()` gives an AppTest whose runs see the flag as a
server does once app.py has run.
"""
from __future__ import annotations

import re
from pathlib import Path
from unittest import mock

from streamlit.runtime.pages_manager import PagesManager
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as _app_test_module


class _NavigationPagesManager(PagesManager):
    """The app calls st.navigation on every run: `pages/` is not the older multipage mode."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        PagesManager.uses_pages_directory = False


class _NavigationAppTest(AppTest):
    def _run(self, *args, **kwargs):
        with mock.patch.object(_app_test_module, "PagesManager", _NavigationPagesManager):
            return super()._run(*args, **kwargs)


def app_test(script_path, *, default_timeout: float = 3) -> AppTest:
    """Like `AppTest.from_file`, for an app that calls `st.navigation` and keeps its pages in `pages/`."""
    return _NavigationAppTest(script_path, default_timeout=default_timeout)


APP = str(Path(__file__).resolve().parent.parent / "app.py")
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def start(page="pages/explore.py", timeout: float = 300, **params) -> AppTest:
    """The app opened on `page` from a link with these parameters, run once without an exception."""
    at = app_test(APP, default_timeout=timeout)
    for k, v in params.items():
        at.query_params[k] = str(v)
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def compressed_bytes(at) -> float:
    value = next(m.value for m in at.metric if m.label == "Compressed")
    number, unit = value.split()
    return float(number.replace(",", "")) * UNITS[unit]


def recipe_caption(at) -> str:
    return re.search(r"recipe: \*\*(.*)\*\*", at.caption[0].value).group(1)


def ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


# control, how to change it, URL params to start from, what the recipe then says, bytes go up or down
