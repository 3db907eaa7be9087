"""Several people on one process: loading from several threads at once."""
import logging
import sys
import threading

from engine import models


def test_loading_in_several_threads_at_once_leaves_the_process_alone(tiny_models, capfd):
    stderr, failures = sys.stderr, []
    start = threading.Barrier(6)

    def load(ref):
        try:
            start.wait()
            models.load(ref, "cpu") if ref in tiny_models.values() else models.open_config(ref)
        except BaseException as e:  # noqa: BLE001 -- reported below
            failures.append(e)

    refs = [tiny_models["gpt2"], tiny_models["llama"], tiny_models["bert"], "minilm", "minilm", tiny_models["gpt2"]]
    threads = [threading.Thread(target=load, args=(r,)) for r in refs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert sys.stderr is stderr
    assert "Loading weights" not in capfd.readouterr().err  # the progress bars of the loading threads stay quiet
    # and only theirs: this thread's transformers warnings still reach transformers' handler
    seen = []
    handler = logging.getLogger("transformers").handlers[0]
    emit, handler.emit = handler.emit, seen.append
    try:
        logging.getLogger("transformers.modeling_utils").warning("a warning outside any load")
    finally:
        handler.emit = emit
    assert [r.getMessage() for r in seen] == ["a warning outside any load"]
