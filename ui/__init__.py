"""The app's shared UI code: controls, context and caches, the tour, exports, serving.

Nothing here touches tensors: it builds recipes from widgets, calls the engine and draws the
plain numbers the engine returns, with the figures of the `charts` package.
"""
