"""The methods end to end on the real offline model: same bytes as the plain method, better quality."""
import pytest

from cli_harness import run_json
from engine.recipe.recipe import Recipe


@pytest.fixture(scope="module")
def minilm(minilm_explorer):
    return minilm_explorer, minilm_explorer.workspace()


def _score(work, recipe):
    applied = work.apply(recipe)
    return applied.memory.compressed_bytes, work.evaluate()["cosine_to_original"]


@pytest.mark.parametrize("plain, aware", [
    (Recipe(sparsity=0.5), Recipe(sparsity=0.5, prune_method="wanda")),
    (Recipe(pattern="2:4"), Recipe(pattern="2:4", prune_method="wanda")),
    (Recipe(bits=4), Recipe(bits=4, quant_method="gptq")),
    (Recipe(rank_ratio=0.4), Recipe(rank_ratio=0.4, lowrank_method="whitened")),
])
def test_aware_method_beats_the_plain_one_at_equal_bytes_on_minilm(minilm, plain, aware):
    _, work = minilm
    plain_bytes, plain_cos = _score(work, plain)
    aware_bytes, aware_cos = _score(work, aware)
    assert aware_bytes == plain_bytes
    assert aware_cos > plain_cos


def test_calibration_is_real_text_disjoint_from_evaluation(minilm):
    ex, _ = minilm
    cal = ex.calibration()
    assert cal.samples == 32 and 2000 < cal.tokens <= 32 * 128 and "Wikipedia" in cal.source
    assert set(cal.hessians) == {i.name for i in ex.layers if i.role != "embedding" and i.tied_to is None}
    for name, h in list(cal.hessians.items())[:3]:
        assert h.shape == (ex.layer(name).shape[1],) * 2 and (h.diagonal() > 0).all()
    from engine.models.calibrate import wiki_paragraphs
    from engine.models.data import lee_background, lee_documents, polarity
    evaluation = set(lee_background()) | set(lee_documents()) | set(polarity()[0])
    assert not evaluation & set(wiki_paragraphs())


def test_kmeans_on_minilm_counts_a_codebook_per_matrix(minilm):
    ex, work = minilm
    applied = work.apply(Recipe(bits=3, quant_method="kmeans"))
    for r in applied.memory.layers:
        if r.compressed:
            (part,) = r.bytes.parts
            assert part.scales == 2 * 8 and part.values == -(-r.info.params * 3 // 8)
            assert work.holders[r.info.name].matrix().unique().numel() <= 8


def test_cli_runs_calibrated_methods_and_reports_the_calibration():
    out = run_json("minilm", "--bits", "4", "--quant-method", "gptq", "--act-order", "--sparsity", "0.5",
                   "--prune-method", "wanda", "--quick")
    assert out["recipe"]["quant_method"] == "gptq" and out["recipe"]["act_order"] is True
    assert out["calibration"]["samples"] == 32 and out["calibration"]["layers"] == 37
    assert out["seconds"]["calibrate"] > 0 and out["metrics"]["cosine_to_original"] < 1


def test_sensitivity_csv_by_layer_type_with_exact_bytes(tmp_path):
    from cli_harness import main

    out = tmp_path / "sens.csv"
    code, _, err = main("sensitivity", "minilm", "--bits", "2", "--by", "type", "--out", str(out))
    assert code == 0, err
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [r["unit"] for r in rows][:2] == ["encoder.layer.*.attention.self.query", "encoder.layer.*.attention.self.key"]
    assert sum(int(r["layers"]) for r in rows) == 37
    # 2-bit codes and one fp16 scale per 128 values: each 384 x 384 layer saves 2*384*384 - (384*384/4 + 2*384*3)
    assert int(rows[0]["bytes_saved"]) == 6 * (2 * 384 * 384 - (384 * 384 // 4 + 2 * 384 * 3))
    losses = {r["unit"]: float(r["loss"]) for r in rows}
    assert all(v >= -1e-6 for v in losses.values())  # cosine to the original cannot exceed 1
    assert max(losses, key=losses.get) != "pooler.dense"


