"""Plotly figures from the engine's plain numbers. Axes carry units; colours follow the theme."""
from __future__ import annotations

import math

import plotly.graph_objects as go

from engine.glossary import metric_name

MIB = 2**20
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]  # one colour per method on Trade-offs
COMPONENTS = [  # engine key -> legend label
    ("values", "quantized / kept values"),
    ("factor_values", "low-rank factors"),
    ("scales", "scales and zero-points"),
    ("index", "masks and indices"),
    ("untouched", "untouched parameters (fp16)"),
]
PNG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


def _layout(fig: go.Figure, height: int = 360, **kw) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), **kw)
    return fig


def memory_bar(mem: dict) -> go.Figure:
    """Original vs compressed bytes, stacked by component (MiB)."""
    comp = mem["components"]
    original_compressible = mem["original_bytes"] - comp["untouched"]
    fig = go.Figure()
    for key, label in COMPONENTS:
        orig = original_compressible if key == "values" else (comp["untouched"] if key == "untouched" else 0)
        fig.add_bar(name=label, y=["original (fp16)", "compressed"], x=[orig / MIB, comp[key] / MIB],
                    orientation="h", hovertemplate="%{x:.3f} MiB<extra>" + label + "</extra>")
    fig.update_layout(barmode="stack", xaxis_title="memory (MiB)")
    return _layout(fig, 240)


def layer_errors(layers: list[dict]) -> go.Figure:
    rows = [r for r in layers if r["compressed"] and r["relative_error"] is not None]
    fig = go.Figure()
    groups = sorted({r.get("group", "other") for r in rows})
    for g in groups:
        sel = [r for r in rows if r.get("group", "other") == g]
        fig.add_bar(name=g, x=[r["name"] for r in sel], y=[r["relative_error"] for r in sel],
                    customdata=[[r["format"], r["sqnr_db"] if r["sqnr_db"] is not None else math.inf] for r in sel],
                    hovertemplate="%{x}<br>relative error %{y:.4f}<br>SQNR %{customdata[1]:.1f} dB"
                                  "<br>%{customdata[0]}<extra></extra>")
    fig.update_layout(xaxis=dict(title="layer (in model order)", showticklabels=False,
                                 categoryorder="array", categoryarray=[r["name"] for r in rows]),
                      yaxis_title="relative Frobenius error ||W−Ŵ|| / ||W||")
    return _layout(fig, 320)


def distill_loss(loss: list[float], objective: str) -> go.Figure:
    """The distillation loss at every step (each step on its own calibration batch)."""
    fig = go.Figure(go.Scatter(x=list(range(1, len(loss) + 1)), y=loss, mode="lines+markers",
                               hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"))
    fig.update_layout(xaxis_title="step", yaxis_title="loss", title=dict(text=objective, font=dict(size=13)))
    return _layout(fig, 260)


def schedule(shares: list[float], steps: list[dict] | None, metric: str | None, one_shot: float | None) -> go.Figure:
    """A gradual schedule: the share of the target pruned after each step (bars), and where it ran,
    the quality after each step (a first estimate) beside the one-shot recipe's (a dashed line)."""
    x = list(range(1, len(shares) + 1))
    fig = go.Figure(go.Bar(x=x, y=[100 * s for s in shares], name="share of the target pruned (%)", opacity=0.45,
                           hovertemplate="step %{x}: %{y:.1f}% of the target<extra></extra>"))
    if steps and metric:
        fig.add_scatter(x=[s["step"] for s in steps], y=[s["metrics"][metric] for s in steps], yaxis="y2",
                        mode="lines+markers", name=f"{metric_name(metric)} after the step",
                        hovertemplate="step %{x}<br>%{y:.4g}<extra></extra>")
        if one_shot is not None:
            fig.add_scatter(x=[x[0], x[-1]], y=[one_shot, one_shot], yaxis="y2", mode="lines",
                            line=dict(dash="dash"), name="one-shot, same recipe")
    fig.update_layout(xaxis=dict(title="step", dtick=1), yaxis=dict(title="pruned (% of the target)", range=[0, 105]),
                      yaxis2=dict(title=metric_name(metric) if metric else "", overlaying="y", side="right",
                                  showgrid=False))
    return _layout(fig, 300)


def spectrum(spec: dict) -> go.Figure:
    """Singular values (log scale) with the kept part, the current rank and the break-even rank
    (spec: engine Explorer.spectrum)."""
    s, cum, rank, energy = spec["singular_values"], spec["energy"], spec["rank"], spec["energy_kept"]
    k = list(range(1, len(s) + 1))
    fig = go.Figure()
    fig.add_scatter(x=k, y=s, mode="lines", name="singular value", line=dict(width=2),
                    hovertemplate="index %{x}<br>σ = %{y:.4g}<extra></extra>")
    fig.add_scatter(x=k, y=cum, mode="lines", name="energy kept (right axis)", yaxis="y2",
                    line=dict(dash="dot"), hovertemplate="rank %{x}: %{y:.1%} of the energy<extra></extra>")
    if rank is not None:
        fig.add_vrect(x0=0.5, x1=rank + 0.5, opacity=0.12, line_width=0, fillcolor="seagreen")
        fig.add_vline(x=rank, line=dict(color="seagreen", width=2),
                      annotation_text=f"rank {rank}: {energy:.1%} energy kept", annotation_position="top left")
    be = spec["break_even_rank"]
    if be <= len(s):
        fig.add_vline(x=be, line=dict(color="firebrick", dash="dash"),
                      annotation_text=f"break-even {be:.0f}", annotation_position="bottom right")
    fig.update_layout(xaxis_title="singular value index (1 = largest)",
                      yaxis=dict(title="singular value σ (log scale)", type="log"),
                      # ticks of its own every 25%: synced to the log axis' ticks they crowd where σ falls steeply
                      yaxis2=dict(title="energy kept (fraction)", overlaying="y", side="right", range=[0, 1.02],
                                  tickformat=".0%", showgrid=False, tickmode="linear", tick0=0, dtick=0.25))
    return _layout(fig, 400)


def energy_heatmap(grid: dict, ratio: float | None) -> go.Figure:
    fig = go.Figure(go.Heatmap(
        z=grid["energy"], x=grid["ratios"], y=grid["layers"], zmin=0, zmax=1, colorscale="Viridis",
        colorbar=dict(title="energy kept", tickformat=".0%"),
        hovertemplate="%{y}<br>rank %{x:.0%} of full: %{z:.1%} energy<extra></extra>"))
    if ratio is not None:
        fig.add_vline(x=ratio, line=dict(color="white", width=2, dash="dash"),
                      annotation_text=f"current {ratio:.0%}", annotation_position="top")
    fig.update_layout(xaxis=dict(title="rank / full rank", tickformat=".0%"),
                      yaxis=dict(title="layer", autorange="reversed", showticklabels=len(grid["layers"]) <= 40))
    return _layout(fig, max(360, min(900, 14 * len(grid["layers"]) + 120)))


def tradeoff(points: list[dict], metric: str, higher: bool, fronts: dict[str, list[int]], current: dict | None,
             metric_label: str) -> go.Figure:
    """Quality against size: the points and one Pareto frontier per method (fronts: method ->
    indices of its frontier points, by rising size), and the current setting; `metric` a key of
    the points, shown under its name (engine.glossary.METRIC_NAMES)."""
    fig = go.Figure()
    name = metric_name(metric)
    many = len(fronts) > 1
    for k, (method, front) in enumerate(fronts.items()):
        color = PALETTE[k % len(PALETTE)]
        sel = [p for p in points if p.get("method", method) == method]
        fig.add_scatter(x=[p["compressed_bytes"] / MIB for p in sel], y=[p[metric] for p in sel],
                        mode="markers", name=f"{method}: points" if many else "sweep points",
                        marker=dict(size=9, opacity=0.7, color=color), text=[p["label"] for p in sel],
                        hovertemplate="%{text}<br>%{x:.2f} MiB<br>" + name + " %{y:.4g}<extra></extra>")
        fp = [points[i] for i in front]
        fig.add_scatter(x=[p["compressed_bytes"] / MIB for p in fp], y=[p[metric] for p in fp],
                        mode="lines", name=f"{method}: frontier" if many else "Pareto frontier",
                        line=dict(shape="hv", width=2, color=color), hoverinfo="skip")
    if current is not None:
        fig.add_scatter(x=[current["compressed_bytes"] / MIB], y=[current[metric]], mode="markers",
                        name="current setting", text=[current["label"]],
                        marker=dict(symbol="star", size=18, line=dict(width=1, color="black")),
                        hovertemplate="current: %{text}<br>%{x:.2f} MiB<br>" + name + " %{y:.4g}<extra></extra>")
    log_y = metric == "perplexity" and points and max(p[metric] for p in points) / max(
        min(p[metric] for p in points), 1e-9) > 20
    fig.update_layout(xaxis_title="compressed size (MiB)",
                      yaxis=dict(title=metric_label + (" (log scale)" if log_y else ""),
                                 type="log" if log_y else "linear"))
    return _layout(fig, 440)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """The indices of the (size, loss) points no other point beats on both (smaller and lower), by rising size.

    >>> pareto_front([(3, 0.1), (1, 0.5), (2, 0.6), (2, 0.2)])
    [1, 3, 0]
    """
    front, best = [], math.inf
    for i in sorted(range(len(points)), key=lambda i: points[i]):
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def candidates_kl(rows: list[dict]) -> go.Figure:
    """Candidates ranked against a reference (engine.studies.ranking.compare's rows): their bytes
    against their mean KL from the reference, with the Pareto front (smaller and closer)."""
    fig = go.Figure()
    x, y = [r["bytes"] / MIB for r in rows], [r["kl"]["mean"] for r in rows]
    fig.add_scatter(x=x, y=y, mode="markers", name="candidates", text=[r["name"] for r in rows],
                    marker=dict(size=10, opacity=0.8, color=PALETTE[0]),
                    customdata=[r["bits_per_weight"] for r in rows],
                    hovertemplate="%{text}<br>%{x:.3f} MiB, %{customdata:.2f} bits per weight"
                                  "<br>mean KL %{y:.4g} nats<extra></extra>")
    front = pareto_front(list(zip(x, y)))
    fig.add_scatter(x=[x[i] for i in front], y=[y[i] for i in front], mode="lines", name="Pareto frontier",
                    line=dict(shape="hv", width=2, color=PALETTE[1]), hoverinfo="skip")
    fig.update_layout(xaxis_title="weights (MiB)", yaxis_title="mean KL(original ‖ candidate) (nats)")
    return _layout(fig, 400)


def sensitivity_heatmap(grid) -> go.Figure:
    """Loss of each unit (row) at each option (column) in context, from a plan's grid
    (engine.studies.plan_result.Grid, `plan(...).grid`)."""
    fig = go.Figure(go.Heatmap(
        z=[list(row) for row in grid.loss], x=list(grid.options), y=list(grid.units), colorscale="RdBu_r", zmid=0,
        colorbar=dict(title=f"loss ({metric_name(grid.metric, True)})"),
        hovertemplate="%{y} at %{x}: loss %{z:.4g}<extra></extra>"))
    fig.update_layout(xaxis=dict(title=f"that unit's setting, the rest at {grid.reference}"),
                      yaxis=dict(title=grid.by, autorange="reversed",
                                 showticklabels=len(grid.units) <= 40))
    return _layout(fig, max(320, min(900, 16 * len(grid.units) + 140)))


def next_tokens(top: list[dict]) -> go.Figure:
    labels = [repr(t["token"]) for t in top]
    fig = go.Figure()
    fig.add_bar(name="original", x=labels, y=[t["original"] for t in top])
    fig.add_bar(name="compressed", x=labels, y=[t["compressed"] for t in top])
    fig.update_layout(barmode="group", xaxis_title="next token", yaxis=dict(title="probability", tickformat=".0%"))
    return _layout(fig, 340)


def label_probs(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    fig.add_bar(name="original", x=[r["label"] for r in rows], y=[r["original"] for r in rows])
    fig.add_bar(name="compressed", x=[r["label"] for r in rows], y=[r["compressed"] for r in rows])
    fig.update_layout(barmode="group", xaxis_title="label", yaxis=dict(title="probability", tickformat=".0%"))
    return _layout(fig, 300)


def fit_bars(fp: dict, devices: list[dict]) -> go.Figure:
    """What the recipe needs (weights, KV cache, activations stacked) above each device's memory (GiB),
    green where the recipe fits."""
    gib = 2**30
    need = [("weights", fp["weights"]["compressed_bytes"]), ("KV cache", fp["kv_cache"]["bytes"]),
            ("activations (estimate)", fp["activations"]["bytes"])]
    fig = go.Figure()
    for (label, n), colour in zip(need, ["#1f77b4", "#ff7f0e", "#9467bd"]):
        fig.add_bar(name=label, y=["needed"], x=[n / gib], orientation="h", marker_color=colour,
                    hovertemplate="%{x:,.2f} GiB<extra>" + label + "</extra>")
    fits = [d["capacity_bytes"] >= fp["total_bytes"] for d in devices]
    fig.add_bar(name="device memory", y=[d["device"] for d in devices], x=[d["capacity_bytes"] / gib for d in devices],
                orientation="h", marker_color=["#2ca02c" if f else "#b0b0b0" for f in fits],
                hovertemplate="%{x:,.1f} GiB<extra>%{y}</extra>")
    fig.add_vline(x=fp["total_bytes"] / gib, line_dash="dot",
                  annotation_text=f"needed: {fp['total_bytes'] / gib:,.2f} GiB", annotation_position="top right")
    fig.update_layout(barmode="stack", xaxis_title="memory (GiB)", yaxis=dict(autorange="reversed"),
                      legend_traceorder="normal")
    return _layout(fig, 120 + 34 * (len(devices) + 1))


def roofline_bars(report: dict) -> go.Figure:
    """Decode's upper bound in tokens/s on each device (the shipped hardware and this machine),
    original bf16 against the compressed model, log scale; this machine's measured figures as
    diamonds."""
    roof = report["roofline"]
    rows = [("this machine (measured bandwidth)", roof["models"]["original bf16"]["decode_tokens_per_s"],
             roof["models"]["compressed"]["decode_tokens_per_s"])]
    rows += [(r["name"], r["original bf16"]["decode_tokens_per_s"], r["compressed"]["decode_tokens_per_s"])
             for r in roof["hardware"]]
    names = [r[0] for r in rows]
    fig = go.Figure()
    fig.add_bar(name="original bf16, bound", y=names, x=[r[1] for r in rows], orientation="h", marker_color="#b0b0b0",
                hovertemplate="%{x:,.0f} tokens/s<extra>original bf16</extra>")
    fig.add_bar(name="compressed, bound", y=names, x=[r[2] for r in rows], orientation="h", marker_color="#1f77b4",
                hovertemplate="%{x:,.0f} tokens/s<extra>compressed</extra>")
    measured = [("original bf16, measured", report["original"].get("bf16"), "#7f7f7f"),
                ("compressed, measured", report["compressed"], "#d62728")]
    for label, got, colour in measured:
        if got:
            fig.add_scatter(name=label, y=[names[0]], x=[got["decode_tokens_per_s"]], mode="markers",
                            marker=dict(symbol="diamond", size=12, color=colour),
                            hovertemplate="%{x:,.1f} tokens/s<extra>" + label + "</extra>")
    fig.update_layout(barmode="group", xaxis=dict(type="log", title="decode tokens/s, batch 1 (upper bound)"),
                      yaxis=dict(autorange="reversed"))
    return _layout(fig, 140 + 44 * len(rows))


def human_bytes(n: int) -> str:
    """'-1.25 MiB', '812.0 KiB', '96 B'"""
    sign, n = ("-" if n < 0 else ""), abs(n)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{sign}{n / size:,.2f} {unit}"
    return f"{sign}{n} B"
