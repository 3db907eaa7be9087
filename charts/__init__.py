"""Figures and the HTML report, drawn from plain numbers: no Streamlit, no tensors.

The app's pages and the command line that draws (`python -m charts report`) both import it:

    figures   plotly figures of every page (spectra, trade-offs, memory, speed, sensitivity)
    lesson    the figures of *Inside a layer*
    report    one self-contained HTML file of a run, for the people who decide
    cli       `python -m charts`: the engine's command line with `report` added
"""
