"""The app, driven page by page with Streamlit's AppTest on the real offline models."""
import json

import pytest
from streamlit.testing.v1 import AppTest

from app_harness import APP, app_test, compressed_bytes, ok, recipe_caption, start  # noqa: F401
from engine.glossary import METRIC_NAMES as NAMES
from engine.recipe.recipe import Recipe
from ui import results

CONTROLS = [
    ("bits", lambda at: at.select_slider(key="ctl_bits").set_value(4), {}, "int4 g128", "down"),
    ("group size", lambda at: at.selectbox(key="ctl_group").set_value(32), {"bits": 4}, "int4 g32", "up"),
    ("symmetric", lambda at: at.toggle(key="ctl_sym").set_value(False), {"bits": 4}, "int4 g128 asym", "up"),
    ("rank", lambda at: at.slider(key="ctl_rank").set_value(0.5), {}, "rank x0.5", "down"),
    ("sparsity", lambda at: at.slider(key="ctl_sparsity").set_value(0.5), {}, "50% sparse", "down"),
    ("pattern", lambda at: at.radio(key="ctl_pattern").set_value("2:4"), {}, "2:4", "down"),
    ("layer group", lambda at: at.radio(key="ctl_layers").set_value("attention"), {"bits": 4},
     "int4 g128 · attention layers only", "up"),
    ("name filter", lambda at: at.text_input(key="ctl_filter").input(r"layer\.0\."), {"bits": 4},
     r"int4 g128 · layers ~ /layer\.0\./", "up"),
    ("embeddings", lambda at: at.checkbox(key="ctl_emb").check(), {"bits": 4}, "int4 g128 · with embeddings", "down"),
]


@pytest.mark.parametrize("name, change, params, expected, direction", CONTROLS, ids=[c[0] for c in CONTROLS])
def test_each_control_changes_the_recipe_and_the_memory_shown(name, change, params, expected, direction):
    at = ok(start(**params))
    before, url_before = compressed_bytes(at), dict(at.query_params)
    change(at)
    ok(at.run())
    assert recipe_caption(at) == expected
    after = compressed_bytes(at)
    assert (after < before) if direction == "down" else (after > before)
    assert dict(at.query_params) != url_before  # the link follows the controls
    # quality for the new recipe is the full protocol, with the encoder's three metrics
    assert any("Full protocol" in c.value for c in at.caption)
    labels = {m.label for m in at.metric}  # the memory's three figures, then the encoder's metrics, by name
    assert labels == {"Original (fp16)", "Compressed", "Ratio", "Cosine to the original",
                      "Similarity to human ratings (Spearman)", "Sentiment accuracy", "Sentiment precision (macro)",
                      "Sentiment recall (macro)", "Sentiment F1 (macro)"}


def test_explore_shows_memory_errors_and_quality_of_a_real_recipe(minilm_explorer):
    from charts import figures as charts

    results.store.clear()  # no result of this recipe known yet (the store is shared by the tests)
    at = ok(start(bits=4, sparsity=0.5, rank=0.5))
    assert recipe_caption(at) == "rank x0.5 · int4 g128 · 50% sparse"
    # memory by component, per-layer error, and (the recipe prunes) the shares a gradual schedule would prune
    assert [c.key for c in at.get("plotly_chart")] == ["explore_memory", "explore_errors", "explore_schedule_chart"]
    shown = {m.label: m.value for m in at.metric}
    assert 0 < float(shown[NAMES["cosine_to_original"]]) < 1
    # the figures are the engine's for the same recipe
    mem = minilm_explorer.workspace().apply(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5)).memory
    assert shown["Ratio"] == f"{mem.compressed_bytes / mem.original_bytes:.3f}"
    assert shown["Compressed"] == charts.human_bytes(mem.compressed_bytes)
    # a recipe not seen before: its first estimate is drawn, then the full protocol
    assert set(at.session_state["timings"]) == {"memory", "layer_errors", "quick", "full"}
    at.run()  # the same recipe again: every result from the store, the full protocol at once
    assert set(at.session_state["timings"]) == {"memory", "layer_errors", "full"}
    assert {m.label: m.value for m in at.metric} == shown


def test_distillation_runs_from_explore_and_reports_before_and_after():
    at = ok(start(bits=3))
    assert len(at.get("plotly_chart")) == 2 and not at.get("arrow_data_frame")[1:]
    at.number_input(key="explore_distill_steps").set_value(3)
    at.button(key="explore_distill").click()
    ok(at.run())
    assert len(at.get("plotly_chart")) == 3  # and the loss at each step
    assert any(c.value.startswith("3 steps at learning rate 0.0001") and "Memory unchanged" in c.value
               for c in at.caption)
    table = at.dataframe[-1].value
    row = table[table["metric"] == NAMES["cosine_to_original"]].iloc[0]
    assert row["baseline"] == 1 and row["distilled"] != row["compressed"]
    assert recipe_caption(at) == "int3 g128"  # the sidebar's recipe, not distilled, is what the page shows


def test_link_opens_the_same_view_and_bad_values_are_reported():
    at = ok(start(bits=3, group="64", sym="false", layers="mlp"))
    assert recipe_caption(at) == "int3 g64 asym · mlp layers only"
    at = start(bits=9, sparsity="lots")
    assert recipe_caption(at) == "uncompressed"
    assert any("bits" in w.value and "sparsity" in w.value for w in at.warning)


def test_recipe_download_and_upload_round_trip():
    at = ok(start(bits=5, rank=0.75))
    text = Recipe(rank_ratio=0.25, bits=3, group_size=32, sparsity=0.3).to_json()
    at.file_uploader(key="ctl_upload").upload("r.json", text.encode(), "application/json")
    ok(at.run())
    assert recipe_caption(at) == "rank x0.25 · int3 g32 · 30% sparse"
    at.file_uploader(key="ctl_upload").set_value(("bad.json", b'{"bits": 1}', "application/json"))
    at.run()
    assert not at.exception
    assert any("bits" in e.value for e in at.error)
    assert recipe_caption(at) == "rank x0.25 · int3 g32 · 30% sparse"  # the user's settings are kept


def test_invalid_name_filter_is_an_error_box_not_a_traceback():
    at = start()
    at.text_input(key="ctl_filter").input("(").run()
    assert not at.exception
    assert any(e.value.startswith("layers:") for e in at.error)


def test_unknown_model_is_an_error_box():
    at = app_test(APP, default_timeout=120)
    at.query_params["model"] = "./no-such-model-folder"
    at.switch_page("pages/explore.py").run()
    assert not at.exception
    assert any("Could not open ./no-such-model-folder" in e.value for e in at.error)


def test_a_page_asked_for_before_app_py_has_run_reruns_through_it():
    # A plain AppTest run is what a fresh server's first request for a page URL is: Streamlit
    # still takes pages/ for its older multipage folder and runs the page file alone.
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["bits"] = "4"
    at.switch_page("pages/fit.py").run()
    ok(at)
    assert at.title[0].value == "Will it fit?"
    assert at.session_state["_recipe"].bits == 4  # app.py's sidebar read the URL
    assert at.sidebar.select_slider(key="ctl_bits").value == 4


def test_spectra_layer_choice_redraws_the_spectrum():
    at = ok(start("pages/spectra.py", rank=0.5))
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # one layer's spectrum, all layers' heatmap
    first = charts[0].proto.spec
    assert "rank 192" in first  # 384 x 384 layers at half rank
    layers = at.selectbox(key="spectra_layer").options
    at.selectbox(key="spectra_layer").set_value(layers[4]).run()
    ok(at)
    assert at.get("plotly_chart")[0].proto.spec != first
    heat = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert len(heat["data"][0]["y"]) == len(layers)


def test_tradeoffs_sweep_draws_frontier_and_offers_csv():
    at = ok(start("pages/tradeoffs.py"))
    at.multiselect(key="tradeoffs_ratios").set_value([1.0])
    at.multiselect(key="tradeoffs_bits").set_value([16, 8, 2])
    at.multiselect(key="tradeoffs_sparsity").set_value([0.0])
    next(b for b in at.button if b.label == "Run sweep").click()
    ok(at.run())
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    points = next(t for t in spec["data"] if t["name"] == "sweep points")
    assert len(points["x"]) == 3
    assert points["x"][0] > points["x"][1] > points["x"][2]  # 16 > 8 > 2 bits
    assert any(t["name"] == "Pareto frontier" for t in spec["data"])
    assert any(t["name"] == "current setting" for t in spec["data"])
    assert at.get("download_button")


def test_compare_encoder_ranks_sentences_under_both_models():
    at = ok(start("pages/compare.py", bits=2))
    table = at.dataframe[0].value
    assert len(table) == 10
    assert sorted(table["rank (original)"]) == list(range(1, 11))
    assert sorted(table["rank (compressed)"]) == list(range(1, 11))
    assert (table["similarity (original)"] != table["similarity (compressed)"]).any()


def test_compare_causal_lm_on_smollm2():
    at = ok(start("pages/compare.py", model="smollm2", bits=4))
    texts = [t.value for t in at.text]
    assert len(texts) == 2 and all(t.startswith("The most important idea") for t in texts)
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {t["name"] for t in spec["data"]} == {"original", "compressed"}
    assert any("dequantized" in i.value for i in at.info)  # its baseline is said on every page


def _metric(at, label):
    return float(next(m.value for m in at.metric if m.label == label))


@pytest.mark.parametrize("params, key, value, expected", [
    ({"sparsity": 0.5}, "ctl_prune", "wanda", "50% sparse Wanda"),
    ({"bits": 3}, "ctl_quant", "gptq", "int3 g128 GPTQ"),
    ({"rank": 0.4}, "ctl_lowrank", "whitened", "rank x0.4 whitened"),
])
def test_method_controls_keep_the_bytes_and_raise_quality(params, key, value, expected):
    at = ok(start(**params))
    before_bytes, before_cos = compressed_bytes(at), _metric(at, NAMES["cosine_to_original"])
    at.selectbox(key=key).set_value(value)
    ok(at.run())
    assert recipe_caption(at) == expected
    assert compressed_bytes(at) == before_bytes
    assert _metric(at, NAMES["cosine_to_original"]) > before_cos
    assert any("Calibration" in c.value and "Wikipedia" in c.value for c in at.caption)
    assert value in at.query_params.values()


def test_kmeans_and_act_order_controls():
    at = ok(start(bits=4, filter=r"layer\.0\."))  # one block: k-means and GPTQ on the whole model are tested elsewhere
    assert not [t for t in at.toggle if t.key == "ctl_actorder"]  # GPTQ only
    at.selectbox(key="ctl_quant").set_value("kmeans")
    ok(at.run())
    assert recipe_caption(at) == r"k-means 4-bit · layers ~ /layer\.0\./"
    at.selectbox(key="ctl_quant").set_value("gptq").run()
    at.toggle(key="ctl_actorder").set_value(True)
    ok(at.run())
    assert recipe_caption(at) == r"int4 g128 GPTQ act-order · layers ~ /layer\.0\./"
    assert at.query_params["actorder"] == "true"


def test_sensitivity_heatmap_and_plan(tmp_path):
    import torch
    from conftest import _save
    from transformers import BertConfig, BertModel

    # a small BERT, wide enough for groups of 64 and 128 to differ: the page's work, quickly
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=256, max_position_embeddings=512))
    at = ok(start("pages/sensitivity.py", model=_save(bert, tmp_path / "bert"), bits=3))
    at.multiselect(key="sensitivity_options").set_value(["2/ch", "3/g64"])
    at.number_input(key="sensitivity_rounds").set_value(1)
    next(b for b in at.button if b.label == "Measure and plan").click()
    ok(at.run())
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    heat = spec["data"][0]
    assert heat["type"] == "heatmap" and heat["x"] == ["reference", "2/ch", "3/g64"] and len(heat["y"]) == 7
    assert all(row[0] == 0 for row in heat["z"])  # the reference's own setting costs nothing
    # 2 bits hurts the values, the attention's output and the MLP (a random BERT's attention is nearly
    # uniform, so its queries and keys hardly matter); the pooler is not in the mean-pooled embedding
    assert all(row[1] > 1e-4 for row in heat["z"][2:6]) and heat["z"][6] == [0, 0, 0] and heat["y"][6] == "pooler.dense"
    plan_rows = at.dataframe[0].value
    assert set(plan_rows["setting"]) <= {"reference", "2/ch", "3/g64"} and plan_rows["layers"].sum() == 13
    assert any(m.label.startswith("Planned") for m in at.metric) and at.get("download_button")
    planned = at.session_state["plans"][next(iter(at.session_state["plans"]))]
    # the plan is a recipe: one click puts it in the sidebar, and every page then shows it
    next(b for b in at.button if b.label == "Use this plan in the sidebar").click()
    ok(at.run())
    recipe = planned.recipe
    assert at.session_state["_recipe"] == recipe and recipe.per_layer
    assert any(e.label.startswith("Per-layer rules") and e.proto.expanded for e in at.sidebar.expander)
    at.switch_page("pages/explore.py").run()
    assert recipe_caption(ok(at)) == recipe.describe()
    assert compressed_bytes(at) == pytest.approx(planned.planned.compressed_bytes, rel=0.005)  # as shown, rounded
    at.switch_page("pages/sensitivity.py").run()  # an option typed in that is not one: an error box, the page goes on
    at.multiselect(key="sensitivity_options").set_value(["3/g64", "4/s1.5"])
    next(b for b in at.button if b.label == "Measure and plan").click()
    at.run()
    assert not at.exception and any("'4/s1.5' is not an option" in e.value for e in at.error)


def test_will_it_fit_plans_from_configs_without_loading_a_model(tmp_path):
    from engine.drivers import footprint

    at = ok(start("pages/fit.py", bits=4))
    assert at.session_state["_ctx"] is None  # no model was loaded for this page
    metrics = {m.label: m.value for m in at.metric}
    sk = footprint.open_skeleton("llama-3-8b")
    fp = footprint.footprint(sk, Recipe(bits=4))
    assert metrics["Parameters"] == "8.030 B"
    assert metrics["Weights"] == f"{fp['weights']['compressed_bytes'] / 2**30:,.2f} GiB"
    table = at.dataframe[0].value
    by_device = {d.split(" (")[0]: row for d, row in zip(table["device"], table.to_dict("records"))}
    assert by_device["16 GiB"]["mildest ladder recipe that fits"] == "uncompressed"  # 14.96 GiB at fp16
    assert by_device["12 GiB"]["mildest ladder recipe that fits"] == "int8 per-channel"
    assert by_device["12 GiB"]["this recipe"] == "fits"  # int4: 5.31 GiB of weights
    assert by_device["8 GiB"]["mildest ladder recipe that fits"] == "int6 g128"

    at.selectbox(key="fit_model").set_value("llama-3-70b").run()
    assert ok(at).metric[0].value == "70.554 B"
    at.selectbox(key="fit_model").set_value(results.CONFIG_REF).run()
    bad = tmp_path / "config.json"
    bad.write_text("not json")
    at.text_input(key="fit_ref").input(str(bad)).run()
    assert not at.exception and "cannot read the config" in at.error[0].value


def test_export_downloads_as_zip_and_loads_back_from_the_model_picker(tmp_path, minilm_explorer):
    import io
    import zipfile

    from engine.storage import explorer_format as export

    at = ok(start(bits=3, sparsity=0.5))
    shown = compressed_bytes(at)
    at.button(key="explore_export").click().run()
    button = [b for b in ok(at).get("download_button") if b.key == "explore_export_download"]
    assert len(button) == 1 and "minilm-int3-g128-50-sparse.zip" in button[0].proto.label
    name, data = at.session_state["export_zip"][3:5]
    zipfile.ZipFile(io.BytesIO(data)).extractall(tmp_path)
    folder = tmp_path / name[:-4]
    manifest, _ = export.read(folder)  # every file checked against the manifest
    assert manifest["tensor_bytes"] == manifest["predicted_bytes"]
    assert abs(manifest["tensor_bytes"] - shown) <= 0.005 * shown  # the figure shown, to its digits
    assert any(f"In it: {manifest['tensor_bytes']:,} bytes of tensors (fixed width)" in c.value for c in at.caption)

    at.checkbox(key="explore_entropy").check().run()  # Huffman-coded: a new build, fewer bytes, said so
    assert not [b for b in ok(at).get("download_button") if b.key == "explore_export_download"]
    at.button(key="explore_export").click().run()
    coded_name, coded = at.session_state["export_zip"][3:5]
    assert coded_name == "minilm-int3-g128-50-sparse-huffman.zip" and len(coded) < len(data)
    assert any("Huffman-coded (" in c.value and "at fixed width" in c.value for c in ok(at).caption)

    at = ok(start(model=str(folder)))  # the picker: an export folder in "Hub id or local folder"
    assert at.session_state["ctl_bits"] == 3 and at.session_state["ctl_sparsity"] == 0.5  # set from its recipe
    assert "loaded from its files" in at.info[0].value
    assert at.session_state["_ctx"].work.applied.export == str(folder)
    work = minilm_explorer.workspace()
    work.apply(Recipe(bits=3, sparsity=0.5))
    expected = work.evaluate()["cosine_to_original"]
    shown_cos = next(m.value for m in at.metric if m.label == NAMES["cosine_to_original"])
    assert float(shown_cos) == pytest.approx(expected, abs=6e-4)  # shown to 4 digits
    at.select_slider(key="ctl_bits").set_value(4).run()
    assert "no longer show the recipe of the export" in ok(at).warning[0].value


def test_a_broken_export_in_the_model_picker_is_an_error_box(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    at = start(model=str(tmp_path))
    assert not at.exception and any("not an export manifest" in e.value for e in at.error)


def test_every_recipe_field_has_a_control_or_a_stated_place():
    from ui import controls

    fields = Recipe.fields()
    assert set(controls.CONTROLS) | set(controls.NOT_IN_SIDEBAR) == set(fields)
    assert not set(controls.CONTROLS) & set(controls.NOT_IN_SIDEBAR)
    assert all(fields[f].url and controls.key(f) == f"ctl_{fields[f].url}" for f in controls.CONTROLS)
    # a recipe shown by the controls comes back from them unchanged
    r = Recipe(rank_ratio=0.25, bits=3, granularity="channel", symmetric=False, pattern="2:4", group="mlp",
               layers=r"\.0\.", include_embeddings=True, lowrank_method="whitened", prune_method="wanda",
               quant_method="gptq", act_order=True, per_layer=[{"match": "query", "bits": 8}])
    shown = {f: controls.widget_value(f, r) for f in controls.CONTROLS}
    assert controls.recipe_from(shown, r.per_layer) == r


def test_structured_pruning_controls_say_what_each_removes_and_the_page_shows_the_smaller_model(minilm_explorer):
    from charts import figures as charts

    at = ok(start(heads=0.25, channels=0.5))
    assert recipe_caption(at) == "25% heads removed · 50% MLP channels removed"
    # minilm: 12 heads of width 32 in each of 6 blocks (q, k, v with biases, o's columns: 4 x 384 x 32 + 3 x 32 per
    # head); 1536 channels (up with its bias, down's column: 2 x 384 + 1 per channel)
    notes = [c.value for c in at.caption if c.value.startswith(("Heads:", "Channels:"))]
    assert notes == [
        f"Heads: 3 of 12 key/value groups in each of 6 blocks: {6 * 3 * (4 * 384 * 32 + 3 * 32):,} parameters, "
        "1.7 MiB at fp16 (on its own; the model shrinks to what the Explore page shows)",
        f"Channels: 768 of 1536 MLP channels in each of 6 blocks: {6 * 768 * (2 * 384 + 1):,} parameters, "
        "6.8 MiB at fp16 (on its own; the model shrinks to what the Explore page shows)"]
    assert any(c.value.startswith("Smaller model: 6 of 6 blocks; 9 of 12 key/value groups per block; 768 of 1536 MLP")
               for c in at.caption)
    mem = minilm_explorer.workspace().apply(Recipe(prune_heads=0.25, prune_channels=0.5)).memory
    assert mem.original_bytes - mem.compressed_bytes == 2 * 6 * (3 * (4 * 384 * 32 + 3 * 32) + 768 * (2 * 384 + 1))
    assert next(m.value for m in at.metric if m.label == "Compressed") == charts.human_bytes(mem.compressed_bytes)
    at.text_input(key="ctl_drop").input("7").run()  # minilm has blocks 0..5
    assert any("remove_blocks: the model has blocks 0..5" in e.value for e in at.error) and not at.exception


def test_the_gradual_schedule_runs_from_explore_and_draws_each_step(tiny_models):
    at = ok(start(model=tiny_models["llama"], sparsity=0.5))
    at.number_input(key="explore_sched_steps").set_value(2)
    at.number_input(key="explore_sched_distill").set_value(0)  # the distillation itself: tests/drivers
    ok(at.button(key="explore_schedule").click().run())
    steps, compare = at.dataframe[-2].value, at.dataframe[-1].value
    assert list(steps["step"]) == [1, 2] and list(steps["share of the target"]) == ["87.5%", "100.0%"]
    assert list(steps["recipe"]) == ["44% sparse", "50% sparse"]
    assert set(compare.columns) == {"metric", "baseline", "at once", "gradual"}
    figure = at.get("plotly_chart")[-1].proto.spec
    assert "after the step" in figure and "one-shot, same recipe" in figure
