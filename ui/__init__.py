"""The app's shared UI code: controls and caches (state.py) and figures (charts.py).

Nothing here touches tensors: it builds recipes from widgets, calls the engine and draws the
plain numbers the engine returns.
"""
