"""A study's results file, written as each result arrives, and --resume: a sweep interrupted after
two of its four points keeps them whole, and resuming runs only the other two, ending with the
file an uninterrupted run writes."""
import csv
import json

import pytest

from cli_harness import main
from engine.errors import UserError
from engine.studies import sweep
from engine.studies.results_file import ResultsFile

TIMINGS = ("apply_s", "evaluate_s")


def _rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(fh)]


def test_an_interrupted_sweep_resumes_from_its_file(tiny_models, tmp_path, monkeypatch):
    model = tiny_models["gpt2"]
    args = ("sweep", model, "--bits", "8,4", "--sparsity", "0,0.5", "--quick")
    code, _, err = main(*args, "--out", str(tmp_path / "whole.csv"))
    assert code == 0, err
    whole = _rows(tmp_path / "whole.csv")
    assert len(whole) == 4

    plain, calls = sweep.point_task, []

    def interrupted_at_the_third(worker, job):
        calls.append(job[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return plain(worker, job)

    monkeypatch.setattr(sweep, "point_task", interrupted_at_the_third)
    out = tmp_path / "a.csv"
    code, _, err = main(*args, "--out", str(out))
    assert code == 130 and "interrupted" in err
    assert _rows(out) == whole[:2]  # the two measured, each row whole

    calls.clear()
    monkeypatch.setattr(sweep, "point_task", lambda worker, job: calls.append(job[0]) or plain(worker, job))
    code, _, err = main(*args, "--out", str(out), "--resume")
    assert code == 0, err
    assert "2 of 4 points already measured, kept" in err
    assert [json.dumps(r.to_dict()) for r in calls] == [r["recipe"] for r in whole[2:]]  # only the rest, in order
    assert _rows(out) == whole  # the file an uninterrupted run writes, in the grid's order

    code, _, err = main(*args, "--out", str(out), "--resume")  # all done: nothing runs
    assert code == 0 and len(calls) == 2 and _rows(out) == whole


def test_a_row_cut_off_mid_write_is_dropped_and_another_studys_file_refused(tmp_path):
    path = tmp_path / "r.csv"
    out = ResultsFile.open(path, ["a", "b", "c"], key_column="unit")
    out.add("a", {"unit": "a", "loss": 0.5})
    out.add("b", {"unit": "b", "loss": 0.25})
    path.write_bytes(path.read_bytes()[:-3])  # b's line cut off
    again = ResultsFile.open(path, ["a", "b", "c"], resume=True, key_column="unit")
    assert again.done == {"a": {"unit": "a", "loss": "0.5"}}
    again.add("c", {"unit": "c", "loss": 1.0})
    again.finish(["a", "b", "c"])
    assert path.read_bytes() == b"unit,loss\r\na,0.5\r\nc,1.0\r\n"
    with pytest.raises(UserError, match=r"holds results of another study \('a' is not one of this study's\)"):
        ResultsFile.open(path, ["x", "y"], resume=True, key_column="unit")
    with pytest.raises(UserError, match=r"no column 'recipe'"):
        ResultsFile.open(path, ["a"], resume=True, key_column="recipe")
    assert ResultsFile.open(path, ["a"], resume=False, key_column="unit").done == {}  # without --resume: anew
    assert path.read_bytes() == b""


def test_json_lines_results_keep_their_values(tmp_path):
    path = tmp_path / "m.jsonl"
    out = ResultsFile.open(path, None)
    out.add("k1", [0.5, 10])
    out.add("k2", {"row": {"name": "x"}})
    assert ResultsFile.open(path, None, resume=True).done == {"k1": [0.5, 10], "k2": {"row": {"name": "x"}}}
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(UserError, match="a line that is not a result"):
        ResultsFile.open(path, None, resume=True)
