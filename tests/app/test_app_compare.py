"""The Compare page's ranking of candidates against the original, on the tiny Llama: the sidebar's
recipe and a typed export path, sorted by mean KL, with the chart of bytes against KL; a bad path
is one error box; an encoder is told why it has no ranking."""
import json

import pytest

from app_harness import ok, start
from cli_harness import main


@pytest.fixture(scope="module")
def export_q8(tiny_models, tmp_path_factory):
    """An export of the tiny Llama at 8 bits, written by `python -m engine export`."""
    out = tmp_path_factory.mktemp("rank") / "llama-q8"
    code, _, err = main("export", tiny_models["llama"], "--bits", "8", "--out", str(out))
    assert code == 0, err
    return str(out)


def _rank(at, paths: str):
    at.text_area(key="rank_paths").set_value(paths)
    at.button(key="rank_run").click().run()
    return at


def test_rank_the_sidebar_recipe_and_a_typed_export(tiny_models, export_q8):
    at = ok(start("pages/compare.py", model=tiny_models["llama"], bits=4))
    assert any(s.value == "Rank candidates against the original" for s in at.subheader)
    ok(_rank(at, export_q8))
    table = at.dataframe[0].value
    assert len(table) == 2
    names = list(table["candidate"])
    assert set(names) == {export_q8, next(n for n in names if n.startswith("sidebar: "))}
    assert "int4" in next(n for n in names if n.startswith("sidebar: "))
    assert list(table["KL mean"]) == sorted(table["KL mean"]) and names[0] == export_q8  # 8 bits closer than 4
    assert (table["KL mean"] > 0).all() and (table["bits/weight"] < 16).all()
    spec = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert {t["name"] for t in spec["data"]} >= {"candidates", "Pareto frontier"}
    assert len(next(t for t in spec["data"] if t["name"] == "candidates")["x"]) == 2


def test_a_bad_path_is_one_error_box(tiny_models, tmp_path):
    at = ok(start("pages/compare.py", model=tiny_models["llama"], bits=4))
    _rank(at, str(tmp_path / "missing"))
    assert not at.exception
    assert [e.value for e in at.error] == [f"compare: candidate {str(tmp_path / 'missing')!r}: no such file or folder"]
    assert not at.dataframe


def test_an_encoder_is_told_why_it_has_no_ranking():
    at = ok(start("pages/compare.py", bits=2))
    assert any("only causal language models" in i.value for i in at.info)
    assert not at.get("button") or not any(b.key == "rank_run" for b in at.button)
