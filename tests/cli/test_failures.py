"""No traceback reaches a user: what fails unexpectedly is one line (the command line exits 1,
the app shows an error box and goes on), and a model the explorer cannot handle is refused in
one line that says why."""
import json

import pytest
import torch
from transformers import AutoTokenizer, ResNetConfig, ResNetModel

from app_harness import APP, app_test, compressed_bytes, ok
from cli_harness import main
from engine import errors
from engine.cli import build_parser
from engine.drivers.explorer import Explorer
from engine.drivers.workspace import Workspace
from engine.models import loading as models
from engine.models.loading import minilm_path
from engine.pipeline import compress as pipeline
from engine.recipe.recipe import Recipe


def test_failure_is_one_line_naming_what_failed():
    assert errors.failure("run", RuntimeError("out of memory\n  at layer 3")) == "run failed: RuntimeError: out of memory"
    assert errors.failure("sweep", KeyError()) == "sweep failed: KeyError"


def boom(*args, **kwargs):
    raise RuntimeError("boom\nand a second line")


def test_an_unexpected_failure_is_one_line_and_exit_1(monkeypatch):
    monkeypatch.setattr(models, "alias_status", boom)
    code, out, err = main("models")
    assert code == 1 and out == ""
    assert err.strip().splitlines() == ["error: models failed: RuntimeError: boom (--debug shows the traceback)"]
    assert "Traceback" not in err


@pytest.mark.parametrize("args", [("--debug", "models"), ("models", "--debug")], ids=["before", "after"])
def test_debug_shows_the_traceback(monkeypatch, args):
    monkeypatch.setattr(models, "alias_status", boom)
    code, _, err = main(*args)
    assert code == 1
    assert "Traceback (most recent call last)" in err and "RuntimeError: boom" in err


def test_debug_is_in_the_help():
    assert "--debug" in build_parser().format_help()
    assert "--debug" in build_parser()._subparsers._group_actions[0].choices["run"].format_help()


@pytest.fixture(scope="module")
def unusable(tmp_path_factory):
    """Folders the explorer refuses: an unknown model type, no config.json, a model of convolutions."""
    root = tmp_path_factory.mktemp("unusable")
    (root / "unknown").mkdir()
    (root / "unknown" / "config.json").write_text(json.dumps({"model_type": "not-a-model"}))
    (root / "no-config").mkdir()
    (root / "no-config" / "weights.bin").write_bytes(b"")
    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])).save_pretrained(root / "resnet")
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(root / "resnet")  # it loads: only its layers are wrong
    return root


@pytest.mark.parametrize("folder, says", [
    ("unknown", "its model type 'not-a-model' is not one transformers"),
    ("no-config", "has no config.json"),
    ("resnet", "ResNetModel has no nn.Linear or Conv1D layer"),
], ids=["unknown-model-type", "no-config", "no-compressible-layer"])
@pytest.mark.parametrize("command", ["run", "inspect"])
def test_a_model_the_explorer_cannot_handle_is_refused_in_one_line(unusable, folder, says, command):
    code, out, err = main(command, str(unusable / folder))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert "Traceback" not in err


def test_the_app_refuses_a_model_without_compressible_layers_in_one_line(unusable):
    at = app_test(APP, default_timeout=120)
    at.query_params["model"] = str(unusable / "resnet")
    at.run()
    assert not at.exception
    assert any("ResNetModel has no nn.Linear or Conv1D layer" in e.value for e in at.error)


# ---------------------------------------------------------------------------------------
# The app: an error box, and the session goes on
# ---------------------------------------------------------------------------------------


def start(page="pages/explore.py", **params):
    at = app_test(APP, default_timeout=300)
    for k, v in params.items():
        at.query_params[k] = str(v)
    return at.switch_page(page)


def test_a_page_whose_engine_call_fails_shows_an_error_box_and_the_next_run_works(monkeypatch, caplog):
    at = start(bits=4)
    with monkeypatch.context() as m:
        m.setattr(Explorer, "ranks_for", boom)
        at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["The Explore page failed: RuntimeError: boom"]
    # the traceback goes to the server's log, not to the page
    assert any(r.exc_info and "The Explore page failed" in r.getMessage() for r in caplog.records)
    ok(at.run())  # the next interaction works: minilm at 4 bits, its bytes by hand (as in test_cli's sweep)
    codes, scales, untouched = 10_764_288 // 2, 2 * 10_764_288 // 128, 2 * 11_948_928
    assert compressed_bytes(at) == pytest.approx(codes + scales + untouched, rel=5e-4)  # shown as "28.08 MiB"


def test_a_fragment_whose_engine_call_fails_shows_an_error_box(monkeypatch):
    at = start("pages/compare.py", bits=8)
    with monkeypatch.context() as m:
        m.setattr(Workspace, "compare", boom)
        at.run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Comparing the models failed: RuntimeError: boom"]
    ok(at.run())
    assert at.dataframe  # the ranking, computed this time


def test_an_apply_that_fails_part_way_holds_no_recipe_and_is_redone(monkeypatch, tiny_explorers):
    ex = tiny_explorers["bert"]
    work, fresh = ex.workspace(), ex.workspace()
    recipe = Recipe(bits=3, sparsity=0.5)
    work.apply(Recipe(bits=4))
    calls, compress = [], pipeline.compress

    def fails_on_the_fifth(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("boom")
        return compress(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(pipeline, "compress", fails_on_the_fifth)
        with pytest.raises(RuntimeError):
            work.ensure(recipe)
    assert work.applied is None and not work.stored  # half-filled: it holds no recipe
    work.ensure(recipe)  # so the next run applies it whole
    fresh.apply(recipe)
    assert work.applied.memory == fresh.applied.memory
    for name in fresh.stored:
        assert torch.equal(work.holders[name].matrix(), fresh.holders[name].matrix()), name


@pytest.mark.parametrize("args, says", [
    (("run", "minilm", "--prune-blocks", "9"), "prune_blocks: the model has 6 blocks and must keep one, got 9"),
    (("fit", "llama-3-8b", "--remove-blocks", "3,40"), "remove_blocks: the model has blocks 0..31"),
    (("run", "gpt2", "--prune-heads", "0.25"), "structured pruning: GPT2LMHeadModel has no blocks of a known layout"),
    (("run", "minilm", "--sparsity", "0.5", "--schedule-steps", "1"), "schedule_steps: 0 (at once) or at least 2"),
], ids=["too-many-blocks", "no-such-block", "unknown-layout", "one-step"])
def test_structured_pruning_it_cannot_do_is_refused_in_one_line(args, says, tiny_models):
    args = tuple(tiny_models["gpt2"] if a == "gpt2" else a for a in args)
    code, out, err = main(*args)
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
