"""The pages that teach and show under AppTest: Inside a layer, the guided tour (every step), and
the report (the app's download and `python -m charts report`)."""
import re

import pytest

from app_harness import ok, recipe_caption, start
from charts import cli as ui_cli
from charts import report as html_report
from cli_harness import main
from engine.recipe.recipe import Recipe
from ui.tour_steps import STEPS


@pytest.mark.parametrize("model", ["minilm", "smollm2"])
def test_inside_a_layer_draws_every_transform_the_recipe_uses(model):
    at = ok(start("pages/layer.py", model=model, bits=3, sparsity=0.5))
    assert at.title[0].value == "Inside a layer"
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) >= 4  # the group on its grid, the error, the scales, the mask, the magnitudes, the codes
    infos = " ".join(i.value for i in at.info)
    assert "full rank" in infos and "no codebook" in infos  # the transforms the recipe does not use say so
    assert any(r"\hat w_i &= s\,q_i" in x.value for x in at.latex)  # the formula beside the picture
    at.number_input(key="layer_group").set_value(0).run()
    ok(at)
    assert "Group 0 of" in " ".join(c.value for c in at.caption)


def test_inside_a_layer_with_low_rank_and_k_means():
    at = ok(start("pages/layer.py", rank=0.5, bits=4, quant="kmeans"))
    captions = " ".join(c.value for c in at.caption)
    assert "shared values stand for" in captions and "Relative error of the whole matrix" in captions
    at.selectbox(key="layer_name").set_value(at.selectbox(key="layer_name").options[-1]).run()
    ok(at)


PAGE_TITLES = {"pages/explore.py": "Explore", "pages/spectra.py": "Spectra", "pages/layer.py": "Inside a layer",
               "pages/tradeoffs.py": "Trade-offs"}


# every step on minilm; on smollm2 the steps that compute nothing the other tests do not (its
# baseline quality, the SVD of every layer, GPTQ and calibration are covered in test_app and test_cli)
@pytest.mark.parametrize("model, steps", [("minilm", range(len(STEPS))), ("smollm2", (3, 6))])
def test_every_tour_step_sets_its_recipe_and_opens_its_page(model, steps):
    at = ok(start("pages/tour.py", model=model))
    links = at.get("page_link")
    assert len(STEPS) >= 6 and len(links) == len(STEPS)
    for i, (step, link) in enumerate(zip(STEPS, links)):
        if i not in steps:
            continue
        assert link.proto.page.endswith(step.page.removeprefix("pages/").removesuffix(".py")) or step.page.endswith(
            "explore.py"), (link.proto.page, step.page)
        at = ok(start(step.page, **{"model": model, "tour": i + 1}))  # what the link opens
        assert at.title[0].value == PAGE_TITLES[step.page], step.title
        assert at.session_state["ctl_model"] == model and "tour" not in at.query_params
        if step.page == "pages/explore.py":
            assert recipe_caption(at) == step.recipe.describe()
    at = start("pages/tour.py", model=model, tour=99)
    assert "tour" in " ".join(w.value for w in at.warning)  # a bad step is reported, the page still draws


def test_the_report_holds_memory_quality_versions_and_a_sweep(minilm_explorer, tmp_path):
    from engine.drivers import run_report as report

    run = report.in_memory(minilm_explorer, Recipe(bits=4), "minilm", quick=True)
    rows = [{"method": "rtn", "label": f"int{b}", "compressed_bytes": 1000 * b, "cosine_to_original": 0.9 + b / 100}
            for b in (2, 4, 8)]
    page = html_report.html(run, sweep={"rows": rows, "metric": "cosine_to_original"})
    assert page.count("<script") >= 3 and page.count("plotly.js") >= 1  # plotly.js inlined once, then the charts
    assert not re.search(r"<(script|link|img)[^>]*\b(src|href)=", page)  # nothing to fetch: it opens offline
    assert f"{run['memory']['compressed_bytes'] / 2**20:,.2f} MiB" in page
    assert "first estimate" in page and "transformers" in page and "Trade-offs" in page
    code, _, err = main("report", "minilm", "--bits", "4", "--quick", "--out", str(tmp_path / "r.html"), run=ui_cli.main)
    assert code == 0, err
    written = (tmp_path / "r.html").read_text()
    assert "minilm: int4 g128" in written and "Cosine to the original (higher is better)" in written
    code, _, err = main("report", "minilm", "--out", str(tmp_path / "r.txt"), run=ui_cli.main)
    assert code == 2 and "should end in .html" in err and err.count("\n") == 1
    code, _, err = main("report", "minilm", "--sweep", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x.html"),
                        run=ui_cli.main)
    assert code == 2 and "cannot read" in err
    # the engine's own command line has no command that draws: it imports no UI library
    code, _, err = main("report", "minilm", "--out", str(tmp_path / "y.html"))
    assert code == 2 and "invalid choice: 'report'" in err and not (tmp_path / "y.html").exists()


def test_explore_offers_the_report_as_one_html_file():
    at = ok(start(bits=4))
    buttons = [b for b in at.get("download_button") if "report" in b.proto.label.lower()]
    assert buttons, "no report download"


def test_the_report_shows_speed_where_it_was_measured(tiny_explorers):
    from engine.drivers import run_report as report
    from engine.speed.measure import SpeedSettings, measure

    ex = tiny_explorers["llama"]
    run = report.in_memory(ex, Recipe(bits=8, group_size=32), "tiny-llama", quick=True)
    speed = measure(ex, Recipe(bits=8, group_size=32), SpeedSettings(prompt_tokens=8, new_tokens=3, repeats=1,
                                                                     dtype="fp32"))
    page = html_report.html(run, speed=speed)
    assert "<h2>Speed</h2>" in page and "tokens/s (decode)" in page
    assert f"{speed['compressed']['decode_tokens_per_s']:,.1f}" in page  # the measured figure, as measured
    assert page.count('class="figure"') == 2  # the memory bar and the roofline
    assert "<h2>Speed</h2>" not in html_report.html(run)  # not measured: no section
