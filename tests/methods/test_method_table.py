"""The tables of methods and number formats: everything that lists them reads them, and adding a
method is one function and one entry (the example the documentation gives: row-wise magnitude
pruning, added here and run through the recipe, the pipeline and the command line)."""
import pytest
import torch

from engine.cli import build_parser
from engine.formats import FORMATS, floats
from engine.formats.ggml.types import LEGACY, TYPES
from engine.methods import KINDS, METHODS, Method, names, register
from engine.methods.wanda import row_mask
from engine.pipeline.compress import compress, predict
from engine.recipe.recipe import Recipe, RecipeError


def _choices(option: str) -> list[str]:
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    return next(a.choices for a in run._actions if option in a.option_strings)


def test_the_recipe_and_the_command_line_list_what_the_tables_hold():
    fields = Recipe.fields()
    for kind in KINDS:
        assert fields[f"{kind}_method"].allowed == names(kind)
        assert list(_choices(f"--{kind}-method")) == list(names(kind))
    assert fields["number_format"].allowed == tuple(FORMATS) == ("int", *TYPES, *floats.TYPES)
    assert list(_choices("--number-format")) == list(FORMATS)


def test_which_method_runs_on_which_format_is_read_from_the_tables():
    assert METHODS["rtn"].formats == tuple(FORMATS)
    assert METHODS["gptq"].formats == ("int", *LEGACY)
    assert METHODS["imatrix"].formats == tuple(t for t in TYPES if t != "mxfp4")
    assert [m for m in METHODS.values() if m.formats == ("int",)] == [
        m for m in METHODS.values() if m.name not in ("rtn", "gptq", "imatrix")]
    for m in METHODS.values():  # every method the recipe allows on a format, it refuses elsewhere
        for fmt in FORMATS:
            if m.kind != "quant":
                continue
            if m.runs_on(fmt):
                assert Recipe().updated(number_format=fmt, quant_method=m.name).quant_method == m.name
            else:
                with pytest.raises(RecipeError, match=f"^quant_method: {m.name} does not run on {fmt} "):
                    Recipe(number_format=fmt, quant_method=m.name, **({"bits": 4} if fmt == "int" else {}))
                home = Recipe(number_format=m.formats[0], quant_method=m.name)
                assert home.updated(number_format=fmt).quant_method == "rtn"  # the format given alone resets it


def test_a_calibrated_method_is_one_the_recipe_calls_calibrated():
    for m in METHODS.values():
        field = f"{m.kind}_method"
        fields = {field: m.name, "rank_ratio": 0.5, "sparsity": 0.5, "bits": 4}
        if m.kind == "quant" and not m.runs_on("int"):
            fields = {field: m.name, "number_format": m.formats[0]}
        assert Recipe(**fields).calibrated == m.calibrated, m.name


def rowwise_prune(m, h, sparsity, nm, sorted_abs=None):
    """Magnitude pruning within each output row: the round(sparsity x n) smallest |w| in all,
    spread evenly over the rows (engine.methods.wanda.row_mask with |w| as the score)."""
    keep = row_mask(m.abs(), sparsity)
    return m * keep, keep


ROWWISE = Method("rowwise", "prune", "Row-wise magnitude", "smallest |W| of each output row", tag="row-wise",
                 run=rowwise_prune)


@pytest.fixture
def rowwise(monkeypatch):
    monkeypatch.delitem(METHODS, "rowwise", raising=False)
    register(ROWWISE)
    yield ROWWISE
    METHODS.pop("rowwise")


def test_adding_a_method_is_one_function_and_one_entry(rowwise):
    assert names("prune")[-1] == "rowwise" and "rowwise" in _choices("--prune-method")
    recipe = Recipe(sparsity=0.25, prune_method="rowwise")
    assert recipe.describe() == "25% sparse row-wise" and not recipe.calibrated
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    stored = compress("m", w, recipe, factors=lambda: None)
    keep = stored.matrices[0].keep
    assert keep.sum(dim=1).tolist() == [12] * 6  # 4 of 16 gone from every row: 24 = round(0.25 x 96)
    dropped = w.abs().masked_fill(keep, float("inf"))
    assert (dropped.min(dim=1).values <= w.abs().masked_fill(~keep, float("inf")).min(dim=1).values).all()
    assert stored.bytes == compress("m", w, Recipe(sparsity=0.25), factors=lambda: None).bytes  # magnitude's bytes
    assert predict(_Info("m", (6, 16)), recipe).bytes == stored.bytes  # and the count from the shape alone
    with pytest.raises(ValueError, match="already in the table"):
        register(ROWWISE)


def test_a_method_not_in_the_table_is_refused_in_one_line_naming_the_field():
    with pytest.raises(RecipeError, match="^prune_method: must be one of magnitude, wanda, sparsegpt, got 'rowwise'$"):
        Recipe(prune_method="rowwise")


class _Info:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape
