"""A real browser: the app served headless, Debian's chromium driven by Playwright."""

import pytest
from playwright.sync_api import sync_playwright

import crowd
from browser import ROOT, app_server, chromium, metric, wait_idle

SHOTS = ROOT / "screenshots"
UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
PAGES = ["", "tour", "layer", "spectra", "tradeoffs", "compare", "fit"]


def as_bytes(text: str) -> float:
    number, unit = text.split()
    return float(number.replace(",", "")) * UNITS[unit]


def move(page, key: str, arrow: str, times: int):
    """Focus the slider of the widget with this key and press an arrow key, as a user would."""
    thumb = page.locator(f".st-key-{key} input[type=range]")
    thumb.focus()
    for _ in range(times):
        thumb.press(arrow)


def keep_first(page, key: str, n: int):
    """Remove the chosen values of a multiselect after its first n, with each tag's remove button."""
    remove = page.locator(f".st-key-{key} button[aria-label^='Remove ']")
    remove.first.wait_for(timeout=120_000)
    while remove.count() > n:
        remove.last.click()


def changed(page, label: str, old: str, timeout=60_000):
    page.wait_for_function(
        """([label, old]) => [...document.querySelectorAll('[data-testid="stMetric"]')]
             .some(m => m.innerText.includes(label) &&
                   m.querySelector('[data-testid="stMetricValue"]').innerText.trim() !== old)""",
        arg=[label, old], timeout=timeout)


@pytest.fixture(scope="module")
def server():
    with app_server() as (url, proc):
        yield url, proc


@pytest.fixture(scope="module")
def served(server):
    return server[0]


BACKGROUND = "() => getComputedStyle(document.querySelector('.stApp')).backgroundColor"


def both_themes(page, name: str):
    """Screenshots of the page as drawn, in the light theme and then the dark one: the app follows
    the browser's color scheme as it changes, without running again (each page is drawn once)."""
    page.screenshot(path=str(SHOTS / f"{name}-light.png"))
    light = page.evaluate(BACKGROUND)
    page.emulate_media(color_scheme="dark")
    page.wait_for_function(f"() => ({BACKGROUND})() !== {light!r}", timeout=30_000)
    assert page.evaluate(BACKGROUND) == "rgb(23, 22, 20)"  # Streamlit's dark background
    page.screenshot(path=str(SHOTS / f"{name}-dark.png"))
    page.emulate_media(color_scheme="light")
    page.wait_for_function(f"() => ({BACKGROUND})() === {light!r}", timeout=30_000)


def test_sliders_move_the_memory_figure_and_every_page_draws(served):
    """The sliders moved by keyboard, as a user would; every page drawn from the link that holds the
    recipe (each shot in the light and the dark theme); the same view opened from its link alone."""
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1400, "height": 2400}, color_scheme="light")
        page.goto(served, timeout=120_000)
        wait_idle(page, timeout=240_000)
        start = metric(page, "Compressed")
        assert start == metric(page, "Original (fp16)")  # uncompressed to begin with

        move(page, "ctl_bits", "ArrowLeft", 1)  # 16 -> 8 bits
        changed(page, "Compressed", start)
        wait_idle(page)
        eight = metric(page, "Compressed")
        assert as_bytes(eight) < as_bytes(start)

        move(page, "ctl_sparsity", "ArrowRight", 10)  # 0 -> 0.5
        # the run of the last value writes it to the link first, then draws its memory
        page.wait_for_function("() => location.search.includes('sparsity=0.5')", timeout=60_000)
        changed(page, "Compressed", eight)
        wait_idle(page)
        page.wait_for_selector("text=Full protocol", timeout=120_000)
        sparse = metric(page, "Compressed")
        assert as_bytes(sparse) < as_bytes(eight)
        assert "bits=8" in page.url and "sparsity=0.5" in page.url
        both_themes(page, "explore")

        query = page.url.split("?", 1)[1]
        for name in PAGES[1:]:
            page.goto(f"{served}/{name}?{query}", timeout=120_000)
            sweep = name == "tradeoffs"
            if sweep:  # the page's grid without low rank or pruning: its 4 bit widths
                keep_first(page, "tradeoffs_ratios", 1)
                keep_first(page, "tradeoffs_sparsity", 1)
                page.get_by_role("button", name="Run sweep").click()
            drawn = {"compare": '[data-testid="stDataFrame"]', "tour": "text=Open step 7"}
            wait_idle(page, 240_000, drawn.get(name, ".js-plotly-plot"))
            if sweep:
                page.wait_for_selector("text=on a frontier", timeout=240_000)
            if name == "spectra":  # the one layer's spectrum and the heatmap of every layer
                page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 2",
                                       timeout=120_000)
            if name == "compare":  # the ranking's section; on the default encoder, the line that says why none
                page.wait_for_selector("text=Rank candidates against the original", timeout=60_000)
                page.wait_for_selector("text=only causal language models give", timeout=60_000)
            assert not page.locator('[data-testid="stException"]').count()
            assert (page.locator(".js-plotly-plot").count() or page.locator('[data-testid="stDataFrame"]').count()
                    or name == "tour")
            both_themes(page, name)

        # the same view opened from its link alone, in a new session in the dark theme
        linked = browser.new_page(viewport={"width": 1400, "height": 1600}, color_scheme="dark")
        linked.goto(f"{served}/?bits=8&sparsity=0.5", timeout=120_000)
        wait_idle(linked, timeout=240_000)
        linked.wait_for_selector("text=Full protocol", timeout=120_000)
        assert metric(linked, "Compressed") == sparse and metric(linked, "Original (fp16)") == start
        assert linked.evaluate(BACKGROUND) == "rgb(23, 22, 20)"
        browser.close()


def test_three_sessions_at_once_each_keep_their_own_recipe(server):
    """Three people open their own links and move the bit-width and sparsity sliders at once
    (tests/crowd.py) for 12 s: no error box and no cross-talk; each makes at least one move and,
    after its last, its page shows its own recipe, that recipe's compressed size and a link that
    holds it. The server stays under its memory at the start (the model loaded and its first page
    drawn) plus the budgets the sessions fill (ui/caches.py: their workspaces, the results, and
    the computations in flight). How many moves a session makes, and a slow redraw, are
    throughput (benchmarks/sessions.py)."""
    from ui import caches

    url, proc = server
    with sync_playwright() as p:  # the model, its reference outputs and its caches, before measuring
        browser = chromium(p)
        page = browser.new_page()
        page.goto(url, timeout=120_000)
        page.wait_for_selector("text=Full protocol", timeout=240_000)
        browser.close()
    with crowd.ServerMemory(proc.pid) as memory:
        people = crowd.crowd(url, crowd.people(3), seconds=12, think=0.5)
    seen = crowd.summary(people)
    assert not seen["errors"] and not seen["crosstalk"] and not seen["unfinished"], seen
    assert all(p.moves >= 1 for p in people), [p.moves for p in people]
    bound = memory.start + caches.WORKSPACE_BYTES + caches.RESULT_BYTES + caches.COMPUTATIONS * caches.COMPUTE_BYTES
    assert memory.peak < bound, (memory.start, memory.peak, bound)


def test_the_report_opens_offline_draws_its_charts_and_prints(tiny_explorers, tmp_path):
    """The report of a recipe with a sweep (a tiny BERT: what is tested here is the file), opened
    from disk with the network cut: every chart draws from the inlined plotly.js; it prints to
    PDF; screenshot in screenshots/report.png."""
    from charts import report as html_report
    from engine.drivers import run_report as report
    from engine.recipe.recipe import Recipe
    from engine.studies.sweep import point

    ex = tiny_explorers["bert"]
    work = ex.workspace()
    rows = [{"method": "rtn", **point(work, Recipe(bits=b, group_size=32), quick=True)} for b in (8, 4, 3)]
    run = report.in_memory(ex, Recipe(bits=4, group_size=32), "tiny-bert", quick=True)
    path = tmp_path / "report.html"
    path.write_text(html_report.html(run, sweep={"rows": rows}), encoding="utf-8")
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = chromium(p)
        context = browser.new_context(offline=True, viewport={"width": 1100, "height": 1400})
        fetched = []
        context.on("request", lambda r: fetched.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page = context.new_page()
        page.goto(path.as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2",
                               timeout=60_000)
        assert page.locator(".js-plotly-plot").count() == 2 and not fetched  # memory and trade-offs, nothing fetched
        page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        pdf = page.pdf(format="A4")
        assert pdf[:5] == b"%PDF-" and len(pdf) > 20_000
        browser.close()
