"""Several people on one app server, measured by driving the real app (not a timed test).

(a) `python -m ui.serve` (what `make run` starts: minilm loads while the server starts), then
    five browser sessions, each opened from a link with its own recipe, move the bit-width and
    sparsity sliders for two minutes (tests/crowd.py): moves, median redraw (a key press until
    the page shows the new recipe and its compressed size), error boxes, cross-talk (a page
    showing a recipe, a size or a link that is not its own) and the server's peak memory (the
    resident set of the server and its children, sampled from /proc). Goals: no error box, no
    cross-talk, server under 2.5 GiB.
(b) `streamlit run app.py` (nothing preloaded), then three sessions open smollm2 at once: the
    time to each one's first chart and to its full protocol, and the server's peak memory.
    Goals: each first chart within 60 s, server under 6 GiB.

    .venv/bin/python benchmarks/sessions.py [--sessions 5] [--seconds 120] [--smollm2 3] [--json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import crowd  # noqa: E402
from browser import CHROMIUM_ARGS, app_server, free_port  # noqa: E402

GIB = 2**30


def serve_command(port: int, module: str) -> list[str]:
    head = [sys.executable, "-m", "ui.serve"] if module == "ui.serve" else [
        sys.executable, "-m", "streamlit", "run", "app.py"]
    return [*head, "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]


def many_sessions(n: int, seconds: float, think: float) -> dict:
    port = free_port()
    with app_server(serve_command(port, "ui.serve"), port=port, timeout=300) as (url, proc):
        with crowd.ServerMemory(proc.pid) as mem:
            people = crowd.crowd(url, crowd.people(n), seconds, think=think)
        return {**crowd.summary(people), "seconds": seconds, "server_start_bytes": mem.start,
                "server_peak_bytes": mem.peak,
                "per_session": [{"name": p.name, "start": p.opened, "moves": p.moves,
                                 "median_redraw_s": sorted(p.redraws)[len(p.redraws) // 2] if p.redraws else None,
                                 "first_chart_s": p.first_chart, "errors": p.errors, "crosstalk": p.crosstalk}
                                for p in people]}


async def _open_at_once(url: str, n: int, query: str, timeout: float) -> list[dict]:
    from playwright.async_api import async_playwright

    async def one(browser):
        context = await browser.new_context(viewport={"width": 1400, "height": 1600})
        page = await context.new_page()
        t0 = time.perf_counter()
        await page.goto(f"{url}/?{query}", timeout=timeout * 1000)
        await page.wait_for_selector(".js-plotly-plot", timeout=timeout * 1000)
        chart = time.perf_counter() - t0
        full = None
        try:
            await page.wait_for_selector("text=Full protocol", timeout=timeout * 1000)
            full = time.perf_counter() - t0
        except Exception:  # noqa: BLE001 -- reported as not reached
            pass
        errors = await page.locator('[data-testid="stException"], [data-testid="stAlertContentError"]').all_inner_texts()
        await context.close()
        return {"first_chart_s": chart, "full_protocol_s": full, "errors": errors}

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        out = await asyncio.gather(*(one(browser) for _ in range(n)))
        await browser.close()
    return list(out)


def smollm2_at_once(n: int, timeout: float) -> dict:
    port = free_port()
    with app_server(serve_command(port, "streamlit"), port=port, timeout=300) as (url, proc):
        with crowd.ServerMemory(proc.pid) as mem:
            rows = asyncio.run(_open_at_once(url, n, "model=smollm2", timeout))
        return {"sessions": rows, "server_start_bytes": mem.start, "server_peak_bytes": mem.peak}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=5, help="(a) minilm sessions moving sliders")
    ap.add_argument("--seconds", type=float, default=120, help="(a) how long they move them")
    ap.add_argument("--think", type=float, default=1.0, help="(a) the most a session waits between two moves, s")
    ap.add_argument("--smollm2", type=int, default=3, help="(b) sessions opening smollm2 at once (0: skip)")
    ap.add_argument("--timeout", type=float, default=900, help="(b) the most to wait for a page, s")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    a = many_sessions(args.sessions, args.seconds, args.think) if args.sessions else None
    b = smollm2_at_once(args.smollm2, args.timeout) if args.smollm2 else None
    if args.json:
        print(json.dumps({"minilm": a, "smollm2": b}, indent=2))
        return
    if a:
        print(f"(a) {a['sessions']} sessions on minilm for {a['seconds']:.0f} s: {a['moves']} moves, median redraw "
              f"{a['median_redraw_s']:.2f} s (slowest {a['slowest_redraw_s']:.2f} s), {len(a['errors'])} error boxes, "
              f"{len(a['crosstalk'])} cross-talk; server {a['server_start_bytes'] / GIB:.2f} GiB at the start, "
              f"peak {a['server_peak_bytes'] / GIB:.2f} GiB (goals: no error box, no cross-talk, under 2.5 GiB)")
        for s in a["per_session"]:
            chart = "none" if s["first_chart_s"] is None else f"{s['first_chart_s']:.1f} s"
            redraw = "-" if s["median_redraw_s"] is None else f"{s['median_redraw_s']:.2f} s"
            print(f"    {s['name']}: opened {s['start']}, first chart {chart}, {s['moves']} moves, "
                  f"median redraw {redraw}")
        for line in a["errors"] + a["crosstalk"]:
            print(f"    ! {line}")
    if b:
        charts = [r["first_chart_s"] for r in b["sessions"]]
        fulls = [r["full_protocol_s"] for r in b["sessions"]]
        print(f"(b) {len(charts)} sessions opening smollm2 at once: first chart "
              f"{', '.join(f'{c:.1f}' for c in charts)} s; full protocol "
              f"{', '.join('not reached' if f is None else f'{f:.1f}' for f in fulls)} s; server peak "
              f"{b['server_peak_bytes'] / GIB:.2f} GiB (goals: each first chart within 60 s, under 6 GiB)")
        for r in b["sessions"]:
            for e in r["errors"]:
                print(f"    ! {e}")


if __name__ == "__main__":
    main()
