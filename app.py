"""The compression explorer: `streamlit run app.py` (or `make run`).

The sidebar holds the model and the three controls on every page; pages are thin: they
read the context this file prepares, call the engine (through ui.results' caches) and draw.
Whatever fails on a page shows one line in an error box, and the session goes on.
"""
import streamlit as st

from ui import context, sidebar

st.set_page_config(page_title="Compression explorer", page_icon=":material/compress:", layout="wide")
context.start_run()

pages = [
    st.Page("pages/tour.py", title="Start here", icon=":material/school:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/tune:", default=True),
    st.Page("pages/layer.py", title="Inside a layer", icon=":material/biotech:"),
    st.Page("pages/spectra.py", title="Spectra", icon=":material/ssid_chart:"),
    st.Page("pages/tradeoffs.py", title="Trade-offs", icon=":material/balance:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("pages/speed.py", title="Speed", icon=":material/speed:"),
    st.Page("pages/sensitivity.py", title="Sensitivity and plan", icon=":material/grid_view:"),
    st.Page("pages/fit.py", title="Will it fit?", icon=":material/memory:"),
]
page = st.navigation(pages)


def run(page):
    """The sidebar, this session's context, then the page."""
    ref, device, recipe = sidebar.sidebar()
    st.session_state["_ctx"] = None
    st.session_state["_recipe"] = recipe
    if recipe is not None and page.title != "Will it fit?":  # planned from configs: no weights loaded
        ctx = st.session_state["_ctx"] = context.open_context(ref, device, recipe)
        if ctx is not None and ctx.export:
            if context.holds_export(ctx):
                st.info(f"Export {ctx.export}: {ctx.recipe.describe()}, loaded from its files (checked against its "
                        "manifest). The pages show these stored values.")
            else:
                st.warning(f"The controls no longer show the recipe of the export {ctx.export}: the pages show "
                           f"{ctx.explorer.loaded.ref} compressed anew. Set the export's recipe again to see it.")
        if ctx is not None and ctx.explorer.loaded.note:
            st.info(f"Note: {ctx.explorer.loaded.note}.")
        if ctx is not None and (page.title == "Spectra" or ctx.explorer.low_rank_layers(recipe)):
            context.ensure_factors(ctx)
        if ctx is not None:
            context.ensure_calibration(ctx)
    page.run()


# whatever fails shows one line in an error box (its traceback in the server's log); the next run starts afresh
context.shielded(f"The {page.title} page", run, page)
