"""The app's latency on minilm, measured by driving the app (not a timed test).

1. Server time after a control change: the app under Streamlit's AppTest, the model warm, a
   walk of control changes each giving a recipe not seen before. The app marks, from the start
   of its run, when the memory figures, the per-layer errors, the first quality estimate and
   the full protocol are drawn. Goals: memory and per-layer error within 0.3 s, first
   estimate within 1.5 s.
2. Time to the first chart: `make run` started on a free port (it loads the default model
   while the server starts), Debian's chromium opening the URL as soon as the server answers;
   seconds until a plotly chart is drawn. Goal: 15 s.

    .venv/bin/python benchmarks/app_latency.py [--repeats 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from browser import app_server, chromium, free_port  # noqa: E402
from engine.hardware.machine import header  # noqa: E402

WALK = [  # (widget kind, key, value): each step changes one control
    ("select_slider", "ctl_bits", 8), ("select_slider", "ctl_bits", 4), ("slider", "ctl_sparsity", 0.3),
    ("selectbox", "ctl_group", 64), ("slider", "ctl_rank", 0.75), ("select_slider", "ctl_bits", 3),
    ("slider", "ctl_sparsity", 0.5), ("radio", "ctl_pattern", "2:4"), ("toggle", "ctl_sym", False),
    ("radio", "ctl_layers", "mlp"), ("slider", "ctl_rank", 0.5),
]
MARKS = ("memory", "layer_errors", "quick", "full")


def server_times() -> list[dict]:
    from app_harness import app_test

    at = app_test(str(ROOT / "app.py"), default_timeout=600)
    at.switch_page("pages/explore.py").run()  # load, factorize, reference outputs
    rows = []
    for kind, key, value in WALK:
        getattr(at, kind)(key=key).set_value(value)
        at.run()
        if at.exception:
            raise RuntimeError(at.exception[0].value)
        t = dict(at.session_state["timings"])
        rows.append({"change": f"{key[4:]}={value}", **{m: t.get(m) for m in MARKS}})
    return rows


def first_chart(repeats: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = chromium(p)
        for _ in range(repeats):
            port = free_port()
            t0 = time.perf_counter()
            with app_server(["make", "--no-print-directory", "run", f"PORT={port}"], port=port, timeout=300) as (url, _):
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(url, timeout=300_000)
                page.wait_for_selector(".js-plotly-plot", timeout=300_000)
                times.append(time.perf_counter() - t0)
                page.close()
        browser.close()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="cold starts of `make run` to time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(header(), file=sys.stderr if getattr(args, 'json', False) else sys.stdout, flush=True)
    rows = server_times()
    starts = first_chart(args.repeats)
    med = {m: statistics.median(r[m] for r in rows) for m in MARKS}
    worst = {m: max(r[m] for r in rows) for m in MARKS}
    result = {"model": "minilm", "changes": rows, "median_s": med, "max_s": worst, "first_chart_s": starts,
              "first_chart_median_s": statistics.median(starts),
              "goals_s": {"memory": 0.3, "layer_errors": 0.3, "quick": 1.5, "first_chart": 15}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{'change':<22}" + "".join(f"{m:>14}" for m in MARKS))
    for r in rows:
        print(f"{r['change']:<22}" + "".join(f"{r[m]:>14.3f}" for m in MARKS))
    print(f"{'median':<22}" + "".join(f"{med[m]:>14.3f}" for m in MARKS))
    print(f"{'slowest':<22}" + "".join(f"{worst[m]:>14.3f}" for m in MARKS))
    print("seconds of server time from the start of the app's run until each part is drawn "
          "(goals: memory and layer_errors 0.3, quick 1.5)")
    print(f"first chart after `make run`: median {statistics.median(starts):.1f} s over {len(starts)} cold starts "
          f"({', '.join(f'{s:.1f}' for s in starts)}; goal 15 s)")


if __name__ == "__main__":
    main()
