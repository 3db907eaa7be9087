"""The Trade-offs page: methods side by side on one grid, and the number formats beside it."""
import json

from app_harness import ok, start


def test_tradeoffs_puts_methods_side_by_side():
    at = ok(start("pages/tradeoffs.py"))
    at.multiselect(key="tradeoffs_ratios").set_value([1.0])
    at.multiselect(key="tradeoffs_bits").set_value([8, 3])
    at.multiselect(key="tradeoffs_sparsity").set_value([0.0])
    at.multiselect(key="tradeoffs_methods").set_value(["Plain (SVD, magnitude, round to nearest)",
                                                        "Calibrated (whitened SVD, Wanda, GPTQ)"])
    next(b for b in at.button if b.label == "Run sweep").click()
    ok(at.run())
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t["name"] for t in spec["data"]]
    assert "Plain (SVD, magnitude, round to nearest): frontier" in names
    assert "Calibrated (whitened SVD, Wanda, GPTQ): frontier" in names
    plain = next(t for t in spec["data"] if t["name"].startswith("Plain") and t["name"].endswith("points"))
    aware = next(t for t in spec["data"] if t["name"].startswith("Calibrated") and t["name"].endswith("points"))
    assert plain["x"] == aware["x"]  # same bits, same bytes
    assert aware["y"][1] > plain["y"][1]  # GPTQ at 3 bits keeps the embeddings closer than RTN
    table = at.dataframe[0].value
    assert set(table["method"]) == {"Plain (SVD, magnitude, round to nearest)", "Calibrated (whitened SVD, Wanda, GPTQ)"}


def test_tradeoffs_has_the_newer_methods_and_the_number_formats(tiny_models):
    at = ok(start("pages/tradeoffs.py", model=tiny_models["llama"]))  # tiny: every method quickly
    at.multiselect(key="tradeoffs_ratios").set_value([0.5])
    at.multiselect(key="tradeoffs_bits").set_value([4])
    at.multiselect(key="tradeoffs_sparsity").set_value([0.5])
    chosen = ["Plain (SVD, magnitude, round to nearest)", "HQQ (half-quadratic fit, no calibration)",
              "AWQ (activation-aware scales)", "SparseGPT (pruning with weight update)",
              "Basis Sharing (2 blocks share a basis)", "Number formats (NF4, FP4, MXFP4, NVFP4, FP8)"]
    at.multiselect(key="tradeoffs_methods").set_value(chosen)
    next(b for b in at.button if b.label == "Run sweep").click()
    ok(at.run())
    table = at.dataframe[0].value
    assert list(dict.fromkeys(table["method"])) == chosen
    size = dict(zip(table["label"], table["compressed_bytes"]))
    plain = size["rank x0.5 · int4 g128 · 50% sparse"]
    assert size["rank x0.5 · int4 g128 HQQ · 50% sparse"] == plain  # the same grid, the same bytes
    assert size["rank x0.5 · int4 g128 · 50% sparse SparseGPT"] == plain  # the same kept count
    assert size["rank x0.5 · int4 g128 AWQ · 50% sparse"] > plain  # and its channel scales
    assert size["rank x0.5 shared by 2 blocks · int4 g128 · 50% sparse"] <= plain  # never more than per layer
    assert list(table["label"][-6:]) == ["NF4", "FP4", "MXFP4", "NVFP4", "FP8_E4M3", "FP8_E5M2"]
    assert size["NF4"] == size["FP4"] < size["FP8_E4M3"] == size["FP8_E5M2"]  # the same layouts
    # a point the sidebar's methods cannot take is left out, and said so: a shared basis by GPTQ
    # is refused below 16 bits (the sidebar's own point, at 16 bits, takes it)
    at = ok(start("pages/tradeoffs.py", model=tiny_models["llama"], rank=0.5, lowrank="shared", quant="gptq",
                 bits=16))
    at.multiselect(key="tradeoffs_ratios").set_value([0.5])
    at.multiselect(key="tradeoffs_bits").set_value([16, 4])
    at.multiselect(key="tradeoffs_sparsity").set_value([0.0])
    next(b for b in at.button if b.label == "Run sweep").click()
    ok(at.run())
    assert "1 point(s) left out" in at.warning[0].value and "quant_method: gptq uses each layer's own inputs" in at.warning[0].value
    assert list(at.dataframe[0].value["bits"]) == [16]
