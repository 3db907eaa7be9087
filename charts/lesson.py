"""Figures of the Inside-a-layer page, from engine.studies.inside_layer's plain numbers. Axes carry units."""
from __future__ import annotations

import plotly.graph_objects as go

from charts.figures import _layout

KEPT, REMOVED, LEVEL, AFTER = "#2ca02c", "#d62728", "#9467bd", "#ff7f0e"


def _bars(fig: go.Figure, hist: dict, name: str, color: str, **kw) -> None:
    e = hist["edges"]
    fig.add_bar(x=[(a + b) / 2 for a, b in zip(e, e[1:])], y=hist["counts"], width=(e[1] - e[0]) if len(e) > 1 else 1,
                name=name, marker_color=color, **kw)


def group_on_grid(q: dict) -> go.Figure:
    """One group's weights before rounding (their histogram), the grid's levels (dotted lines, or
    at more than 32 levels ticks along the axis), and the values after rounding, which sit on them."""
    fig = go.Figure()
    fig.add_histogram(x=q["before"], nbinsx=60, name="before rounding", marker_color="#1f77b4", opacity=0.6)
    after = {}
    for v in q["after"]:
        after[v] = after.get(v, 0) + 1
    levels = q["levels"]
    span = (max(levels) - min(levels)) or 1.0
    fig.add_bar(x=list(after), y=list(after.values()), width=max(q["scale"] * 0.5, span / 250), name="after rounding",
                marker_color=AFTER)
    name = f"the {len(levels)} levels of the grid"
    if len(levels) <= 32:
        for level in levels:
            fig.add_vline(x=level, line=dict(color=LEVEL, width=1, dash="dot"))
        fig.add_scatter(x=[None], y=[None], mode="lines", line=dict(color=LEVEL, dash="dot"), name=name)
    else:
        fig.add_scatter(x=levels, y=[0] * len(levels), mode="markers", name=name, hoverinfo="x",
                        marker=dict(symbol="line-ns-open", size=10, color=LEVEL))
    fig.update_layout(barmode="overlay", xaxis_title="weight value", yaxis_title="values in the group (count)")
    return _layout(fig, 360)


def error_histogram(q: dict) -> go.Figure:
    fig = go.Figure()
    _bars(fig, q["error"], "rounding error", "#1f77b4")
    for x in (-q["half_step_max"], q["half_step_max"]):
        fig.add_vline(x=x, line=dict(color=REMOVED, dash="dash"))
    fig.update_layout(xaxis_title="rounding error ŵ − w (weight units)", yaxis_title="weights (count)",
                      showlegend=False)
    return _layout(fig, 300)


def heatmap(z: list, title: str, xlabel: str, ylabel: str, unit: str, colorscale: str = "Viridis",
            symmetric: bool = False, height: int = 360) -> go.Figure:
    kw = {}
    if symmetric:
        m = max((abs(v) for row in z for v in row), default=1.0) or 1.0
        kw = dict(zmin=-m, zmax=m)
    fig = go.Figure(go.Heatmap(z=z, colorscale=colorscale, colorbar=dict(title=unit), **kw))
    fig.update_layout(title=dict(text=title, font=dict(size=13)), xaxis_title=xlabel, yaxis_title=ylabel)
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, height)


def spectrum_cut(singular_values: list, rank: int) -> go.Figure:
    fig = go.Figure()
    n = len(singular_values)
    fig.add_bar(x=list(range(1, rank + 1)), y=singular_values[:rank], name="kept", marker_color=KEPT)
    fig.add_bar(x=list(range(rank + 1, n + 1)), y=singular_values[rank:], name="dropped", marker_color=REMOVED)
    fig.add_vline(x=rank + 0.5, line=dict(color="#555", dash="dash"))
    fig.update_layout(xaxis_title="index k (largest first)", yaxis_title="singular value σₖ", bargap=0)
    fig.update_yaxes(type="log")
    return _layout(fig, 320)


def magnitudes(p: dict) -> go.Figure:
    fig = go.Figure()
    _bars(fig, p["kept"], "kept", KEPT, opacity=0.75)
    _bars(fig, p["removed"], "removed", REMOVED, opacity=0.75)
    if p["threshold"] is not None and p["pattern"] == "unstructured" and p["method"] == "magnitude":
        fig.add_vline(x=p["threshold"], line=dict(color="#555", dash="dash"))
    fig.update_layout(barmode="overlay", xaxis_title="|weight|", yaxis_title="weights (count)")
    fig.update_yaxes(type="log")
    return _layout(fig, 320)


def codebook(s: dict) -> go.Figure:
    fig = go.Figure()
    _bars(fig, s["histogram"], "weights before sharing", "#1f77b4", opacity=0.7)
    for c in s["codebook"]:
        fig.add_vline(x=c, line=dict(color=LEVEL, width=1))
    fig.add_scatter(x=[None], y=[None], mode="lines", line=dict(color=LEVEL),
                    name=f"the {len(s['codebook'])} shared values (codebook)")
    fig.update_layout(xaxis_title="weight value", yaxis_title="weights (count)")
    return _layout(fig, 340)


def code_lengths(e: dict) -> go.Figure:
    codes = list(range(len(e["counts"])))
    fig = go.Figure()
    fig.add_bar(x=codes, y=e["counts"], name="how often each code occurs", marker_color="#1f77b4")
    fig.add_scatter(x=codes, y=e["lengths"], name="its Huffman code length (bits)", mode="lines+markers",
                    marker_color=AFTER, yaxis="y2")
    fig.add_scatter(x=[codes[0], codes[-1]], y=[e["fixed"]] * 2, name="fixed width (bits)", mode="lines",
                    line=dict(color="#555", dash="dash"), yaxis="y2")
    fig.update_layout(xaxis_title="code (b-bit integer)", yaxis_title="values (count)",
                      yaxis2=dict(title="code length (bits)", overlaying="y", side="right", rangemode="tozero"))
    return _layout(fig, 340)
