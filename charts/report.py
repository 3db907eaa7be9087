"""One self-contained HTML report of a recipe on a model, for the people who decide.

Built from plain numbers: the run report (engine.drivers.run_report, what `run --json` prints), and where
they were measured, the speed report (engine.speed.measure) and a sweep's points. plotly.js is inlined
once, so the file opens offline and prints to PDF. Used by the app's "Download report" and by
`python -m engine report`. Imports no Streamlit.

    page = html(run_report, speed=None, sweep=None)    # a str, the whole file
"""
from __future__ import annotations

import datetime
import html as _html
import importlib.metadata
import json
import platform

from charts import figures
from engine.glossary import CONCEPTS, HIGHER_IS_BETTER, metric_name, with_metric_names
from engine.recipe.recipe import Recipe

PACKAGES = ("torch", "transformers", "accelerate", "streamlit", "plotly", "gguf", "compressed-tensors")
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1b1b1f; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
td, th { border: 1px solid #ddd; padding: .25rem .6rem; text-align: right; } td:first-child, th:first-child { text-align: left; }
.muted { color: #555; font-size: .9rem; } pre { background: #f6f6f8; padding: .6rem; overflow-x: auto; font-size: .8rem; }
.figure { break-inside: avoid; page-break-inside: avoid; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } }
"""


def _e(x) -> str:
    return _html.escape(str(x))


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


class _Figures:
    """plotly figures as HTML, plotly.js inlined with the first (the file then opens offline)."""

    def __init__(self):
        self.first = True

    def __call__(self, fig) -> str:
        fig.update_layout(template="plotly_white")
        out = fig.to_html(full_html=False, include_plotlyjs=self.first, config={"displaylogo": False})
        self.first = False
        return f'<div class="figure">{out}</div>'


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _source(run: dict) -> str:
    """What the model is: an offline alias's description, else its kind and where it came from."""
    from engine.models.loading import ALIASES

    alias = ALIASES.get(run["model"])
    return alias.description if alias else f"{run['kind']} model from {run['source']}"


def html(run: dict, speed: dict | None = None, sweep: dict | None = None, when: datetime.datetime | None = None) -> str:
    """The report page. `run`: engine.drivers.run_report's keys (model, source, kind, device, note, recipe,
    metrics with their protocol, baseline_metrics, memory); `speed`: engine.speed.measure.measure's
    report; `sweep`: {"rows": the Trade-offs page's or `sweep`'s points, "metric": one of them}."""
    when = when or datetime.datetime.now().astimezone()
    figure = _Figures()
    recipe = Recipe.from_dict(run["recipe"])
    m = run["memory"]
    parts = [f"<h1>{_e(run['model'])}: {_e(recipe.describe())}</h1>",
             f"<p class='muted'>Compression explorer report, {when:%Y-%m-%d %H:%M %Z}. {_e(_source(run))}; "
             f"measured on {_e(run['device'])}.</p>"]
    if run.get("note"):
        parts.append(f"<p><b>Baseline:</b> {_e(run['note'])}</p>")
    parts += ["<h2>Memory</h2>",
              f"<p>{_mib(m['original_bytes'])} → <b>{_mib(m['compressed_bytes'])}</b> (ratio {m['ratio']:.3f}, "
              f"{1 / m['ratio']:.2f}× smaller), every byte counted: codes, scales and zero-points, masks and "
              "indices, factors, and the parameters left uncompressed at fp16. The baseline is fp16.</p>",
              figure(figures.memory_bar(m))]
    parts += _quality(run)
    if speed:
        parts += _speed(speed, figure)
    if sweep and sweep.get("rows"):
        parts += _sweep(sweep, run, figure)
    parts += ["<h2>Recipe</h2>", f"<pre>{_e(recipe.to_json())}</pre>",
              "<p class='muted'>Load it in the app (sidebar, <i>Recipe file</i>, <i>Load a recipe</i>) or run "
              f"<code>python -m engine run {_e(run['model'])} --recipe recipe.json</code>.</p>",
              "<h2>Versions</h2>", _table(["package", "version"], [[k, v] for k, v in versions().items()])]
    title = f"{run['model']}: {recipe.describe()}"
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")


def _quality(run: dict) -> list[str]:
    metrics, base = run["metrics"], run["baseline_metrics"]
    protocol = metrics.get("protocol", {})
    rows = []
    for k, v in metrics.items():
        if k == "protocol" or k.endswith(("_low", "_high")) or not isinstance(v, (int, float)):
            continue
        better = {True: "higher", False: "lower"}.get(HIGHER_IS_BETTER.get(k), "")
        sure = f"{metrics[k + '_low']:.4f} to {metrics[k + '_high']:.4f}" if k + "_low" in metrics else ""
        rows.append([metric_name(k) + (f" ({better} is better)" if better else ""),
                     f"{base.get(k, float('nan')):.4f}", f"{v:.4f}", sure])
    estimate = protocol.get("estimate_only")
    said = "; ".join(f"{metric_name(k, True) if metric_name(k) != k else k.replace('_', ' ')}: "
                     f"{with_metric_names(str(v))}" for k, v in protocol.items()
                     if k != "estimate_only" and isinstance(v, (str, int, float)))
    out = ["<h2>Quality</h2>",
           "<p>The compressed model against the uncompressed one on real held-out text"
           + (", <b>first estimate</b> (part of the text, with its 95% interval)" if estimate else "") + ".</p>",
           _table(["metric", "uncompressed", "compressed", "95% interval" if estimate else ""], rows)]
    if said:
        out.append(f"<p class='muted'>Protocol: {_e(said)}.</p>")
    out += [f"<p class='muted'>{_e(metric_name(k))}: {_e(CONCEPTS[k])}</p>" for k in metrics if k in CONCEPTS]
    return out


def _speed(speed: dict, figure) -> list[str]:
    rate = "decode_tokens_per_s" if speed["kind"] == "causal-lm" else "sentences_per_s"
    unit = "tokens/s (decode)" if speed["kind"] == "causal-lm" else "sentences/s"
    rows = [[f"original ({k})", f"{o[rate]:,.1f}"] for k, o in speed["original"].items()]
    rows.append(["compressed, on its kernels", f"{speed['compressed'][rate]:,.1f}"])
    if (speed.get("llama_cpp") or {}).get("installed"):
        rows.append(["llama.cpp, the model's GGUF file", f"{speed['llama_cpp']['decode_tokens_per_s']:,.1f}"])
    out = ["<h2>Speed</h2>",
           f"<p>Measured on {_e(speed['device'])} with {speed['threads']} thread(s), {_e(speed['runtime_dtype'])} "
           f"({_e(speed.get('runtime_dtype_why', ''))}); medians of repeated runs. "
           f"{_e(speed.get('machine', ''))}.</p>", _table(["model", unit], rows),
           "<p class='muted'>Kernels: " + _e(", ".join(f"{k} × {n}" for k, n in speed["kernels"].items())) + "</p>"]
    if speed["kind"] == "causal-lm":
        out.append(figure(figures.roofline_bars(speed)))
    return out


def _sweep(sweep: dict, run: dict, figure) -> list[str]:
    from engine.studies import sweep as engine_sweep

    rows = sweep["rows"]
    metric = sweep.get("metric") or next((m for m in HIGHER_IS_BETTER if all(m in r for r in rows)), None)
    if metric is None:  # points without a quality metric the explorer measures: nothing to draw
        return []
    higher = HIGHER_IS_BETTER[metric]
    fronts = engine_sweep.fronts(rows, metric, higher)
    current = {"label": Recipe.from_dict(run["recipe"]).describe(),
               "compressed_bytes": run["memory"]["compressed_bytes"], **run["metrics"]}
    label = f"{metric_name(metric)} ({'higher' if higher else 'lower'} is better)"
    estimate = any(r.get("estimate_only") for r in rows)
    return ["<h2>Trade-offs</h2>",
            f"<p>{len(rows)} settings measured" + (" (first estimates)" if estimate else "") + "; the lines are "
            f"the Pareto frontiers, the star this report's recipe. {_e(CONCEPTS['pareto'])}</p>",
            figure(figures.tradeoff(rows, metric, higher, fronts, current if metric in run["metrics"] else None,
                                   label)),
            "<details><summary>The points</summary><pre>" + _e(json.dumps(
                [{k: r[k] for k in ("method", "label", "compressed_bytes", metric) if k in r} for r in rows],
                indent=1)) + "</pre></details>"]
