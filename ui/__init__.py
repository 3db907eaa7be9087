"""The app's shared UI code: controls, context and caches, figures, the tour and the report.

Nothing here touches tensors: it builds recipes from widgets, calls the engine and draws the
plain numbers the engine returns.
"""
