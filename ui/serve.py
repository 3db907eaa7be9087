"""`make run`: start the app, and load the default model while the browser connects.

    python -m ui.serve [--allow FILE.json] [--cluster ADDRESS] [streamlit options, e.g. --server.port 8502]

The same as `streamlit run app.py [options]`, except that a background thread imports the
engine (torch, transformers) and loads the default model (then its reference outputs, sorted
magnitudes and SVDs) while the server starts, so the first page finds it ready or nearly so.

`--allow FILE.json` serves the app to others with an allow-list of models (ui/access.py; the
same as EXPLORER_ALLOW=FILE.json): the file is read before the server starts, and one that
cannot be used stops it with one line and exit status 2.

`--cluster ADDRESS` ('auto' or a Ray head's HOST:PORT; the same as EXPLORER_CLUSTER=ADDRESS): the
Trade-offs and Sensitivity pages measure on that Ray cluster's workers (ui/cluster.py); an address
where nothing answers stops the server with one line and exit status 2.
"""
import os
import sys
import threading
from pathlib import Path

from streamlit.web import cli


def _preload(model: str):
    from ui import context

    context.preload(model)


def split_option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """(the value of option `name` or None, the other arguments, for streamlit).

    >>> split_option(["--allow", "a.json", "--server.port", "8502"], "--allow")
    ('a.json', ['--server.port', '8502'])
    >>> split_option(["--cluster=auto"], "--cluster")
    ('auto', [])
    """
    value, rest, it = None, [], iter(args)
    for arg in it:
        if arg == name:
            value = next(it, "")
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return value, rest


def main() -> int:
    allow, rest = split_option(sys.argv[1:], "--allow")
    cluster, rest = split_option(rest, "--cluster")
    if cluster is not None:
        from engine.cluster.ray_workers import reachable
        from engine.errors import UserError

        try:
            if cluster != "auto":
                reachable(cluster)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        os.environ["EXPLORER_CLUSTER"] = cluster  # for the app's sessions, in this process
    if allow is not None:
        if not allow:
            print("error: --allow needs a policy file (e.g. --allow assets/allow.example.json)", file=sys.stderr)
            return 2
        os.environ["EXPLORER_ALLOW"] = str(Path(allow).resolve())  # for the app's sessions, in this process
    from ui import access, allocator

    try:
        policy = access.current()
    except access.PolicyError as e:
        print(f"error: {access.ENV if allow is None else '--allow'}: {e}", file=sys.stderr)
        return 2
    allocator.give_back_large_blocks()  # before the model loads (ui.context does it too, for `streamlit run`)
    from engine.hardware.machine import pick_threads

    pick_threads()  # torch's threads: the cores this process may use (affinity, container quota)
    threading.Thread(target=_preload, args=(policy.default,), name="preload").start()
    sys.argv = ["streamlit", "run", str(Path(__file__).resolve().parent.parent / "app.py"), *rest]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main())
