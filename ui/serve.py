"""`make run`: start the app, and load the default model while the browser connects.

    python -m ui.serve [streamlit options, e.g. --server.port 8502]

The same as `streamlit run app.py [options]`, except that a background thread imports the
engine (torch, transformers) and loads the default model (then its reference outputs, sorted
magnitudes and SVDs) while the server starts, so the first page finds it ready or nearly so.
"""
import sys
import threading
from pathlib import Path

from streamlit.web import cli


def _preload():
    from engine.models import DEFAULT_MODEL
    from ui import context

    context.preload(DEFAULT_MODEL)


def main() -> int:
    from ui import allocator

    allocator.give_back_large_blocks()  # before the model loads (ui.context does it too, for `streamlit run`)
    threading.Thread(target=_preload, name="preload").start()
    sys.argv = ["streamlit", "run", str(Path(__file__).resolve().parent.parent / "app.py"), *sys.argv[1:]]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
