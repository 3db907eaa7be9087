"""Several people on one app server, measured by driving the real app (not a timed test).

(a) `python -m ui.serve` (what `make run` starts: minilm loads while the server starts), then
    five browser sessions, each opened from a link with its own recipe, move the bit-width and
    sparsity sliders for two minutes (tests/crowd.py): moves, median redraw (a key press until
    the page shows the new recipe and its compressed size), slow redraws (not shown within
    --timeout s), error boxes, cross-talk (a page showing a recipe, a size or a link that is not
    its own), each page after its last move, and the server's peak memory (the resident set of
    the server and its children, sampled from /proc). Goals: no error box, no cross-talk, every
    page its own after its last move, server under 2.5 GiB.
(b) `streamlit run app.py` (nothing preloaded), then three sessions open smollm2 at once: the
    time to each one's first chart and to its full protocol, and the server's peak memory.
    Goals: each first chart within 60 s, server under 6 GiB.
(c) With --smollm2-moves N: `streamlit run app.py`, then N sessions open smollm2 from their own
    links and move the bit-width and sparsity sliders for --smollm2-seconds, as in (a), while the
    server's memory is sampled every 0.5 s: at the start, after 1, 2, 5 and 10 minutes (each the
    median of the samples of the 10 s before), its peak, and per third of the run its median and
    peak; the growth over the last third is its median less the middle third's (a median over
    minutes, so that a few computations running at once, which come and go, do not count as
    growth). Goals: under 6 GiB, and flat after the first minutes (growth at most 0.1 GiB).

The machine it ran on comes first (engine.hardware.machine.header: CPU model, usable cores, native bf16).

    .venv/bin/python benchmarks/sessions.py [--sessions 5] [--seconds 120] [--smollm2 3]
        [--smollm2-moves 3 --smollm2-seconds 600] [--json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import crowd  # noqa: E402
from browser import CHROMIUM_ARGS, app_server, free_port  # noqa: E402

GIB = 2**30
MINUTES = (1, 2, 5, 10)
FLAT_GIB = 0.1  # the most the last third of a run may add to the middle third's median, to count as flat


def serve_command(port: int, module: str) -> list[str]:
    head = [sys.executable, "-m", "ui.serve"] if module == "ui.serve" else [
        sys.executable, "-m", "streamlit", "run", "app.py"]
    return [*head, "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]


def memory_figures(samples: list[tuple[float, int]]) -> dict:
    """From (seconds, bytes) samples: bytes at the start, after each of MINUTES (the median of the
    samples of the 10 s before; None past the run's end), the peak, per third of the run its
    median and peak, and the growth over the last third (its median less the middle third's)."""
    def around(t: float) -> int | None:
        if t > samples[-1][0] + 1:
            return None
        near = [b for s, b in samples if t - 10 <= s <= t] or [min(samples, key=lambda x: abs(x[0] - t))[1]]
        return int(statistics.median(near))

    end = samples[-1][0]
    thirds = [[b for s, b in samples if k * end / 3 <= s < (k + 1) * end / 3 or k == 2 and s == end]
              for k in range(3)]
    medians = [int(statistics.median(t)) if t else None for t in thirds]
    return {"start_bytes": samples[0][1], "minutes_bytes": {m: around(60 * m) for m in MINUTES},
            "peak_bytes": max(b for _, b in samples), "seconds": end,
            "thirds_median_bytes": medians, "thirds_peak_bytes": [max(t) if t else None for t in thirds],
            "last_third_growth_bytes": medians[2] - medians[1] if None not in medians[1:] else None,
            "every_minute_bytes": [around(60 * m) for m in range(int(end // 60) + 1)]}


def per_session(people: list) -> list[dict]:
    return [{"name": p.name, "start": p.opened, "moves": p.moves, "slow": len(p.slow),
             "median_redraw_s": statistics.median(p.redraws) if p.redraws else None,
             "first_chart_s": p.first_chart, "final_ok": p.final_ok, "errors": p.errors, "crosstalk": p.crosstalk}
            for p in people]


def moving(n: int, seconds: float, think: float, timeout: float, model: str, module: str) -> dict:
    """n sessions on `model` moving the sliders for `seconds` on a server started by `module`."""
    port = free_port()
    with app_server(serve_command(port, module), port=port, timeout=300) as (url, proc):
        with crowd.ServerMemory(proc.pid, every=0.5) as mem:
            people = crowd.crowd(url, crowd.people(n, model), seconds, timeout=timeout, think=think)
        return {**crowd.summary(people), "model": model, "seconds": seconds, "server_start_bytes": mem.start,
                "server_peak_bytes": mem.peak, "memory": memory_figures(mem.samples), "per_session": per_session(people)}


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


def gib(b: int | None) -> str:
    return "-" if b is None else f"{b / GIB:.2f}"


def print_moving(label: str, r: dict, goal_gib: float, timeline: bool) -> None:
    m = r["memory"]
    redraw = "-" if r["median_redraw_s"] is None else f"{r['median_redraw_s']:.2f} s"
    slowest = "-" if r["slowest_redraw_s"] is None else f"{r['slowest_redraw_s']:.2f} s"
    print(f"{label} {r['sessions']} sessions on {r['model']} for {r['seconds']:.0f} s: {r['moves']} moves, median "
          f"redraw {redraw} (slowest {slowest}), {len(r['slow'])} slow redraws, {len(r['errors'])} error boxes, "
          f"{len(r['crosstalk'])} cross-talk, {len(r['unfinished'])} pages not their own after the last move "
          "(goals: no error box, no cross-talk, every page its own)")
    print(f"    server memory: {gib(m['start_bytes'])} GiB at the start, peak {gib(m['peak_bytes'])} GiB "
          f"(goal: under {goal_gib} GiB)")
    if timeline:
        after = ", ".join(f"{k} min {gib(v)}" for k, v in m["minutes_bytes"].items())
        third = m["seconds"] / 3 / 60
        growth = m["last_third_growth_bytes"]
        print(f"    after {after} GiB; thirds of the run (0 to {third:.1f}, to {2 * third:.1f}, to {3 * third:.1f} "
              f"min): median {', '.join(gib(b) for b in m['thirds_median_bytes'])} GiB, peak "
              f"{', '.join(gib(b) for b in m['thirds_peak_bytes'])} GiB")
        print(f"    growth over the last third (its median less the middle third's): "
              f"{'-' if growth is None else f'{growth / GIB:+.2f}'} GiB (goal: flat, at most +{FLAT_GIB} GiB)")
        print(f"    every minute: {', '.join(gib(b) for b in m['every_minute_bytes'])} GiB")
    for s in r["per_session"]:
        chart = "none" if s["first_chart_s"] is None else f"{s['first_chart_s']:.1f} s"
        redraw = "-" if s["median_redraw_s"] is None else f"{s['median_redraw_s']:.2f} s"
        print(f"    {s['name']}: opened {s['start']}, first chart {chart}, {s['moves']} moves, median redraw "
              f"{redraw}, {s['slow']} slow, after its last move {'its own' if s['final_ok'] else 'NOT its own'}")
    for line in r["errors"] + r["crosstalk"] + r["unfinished"]:
        print(f"    ! {line}")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=5, help="(a) minilm sessions moving sliders (0: skip)")
    ap.add_argument("--seconds", type=float, default=120, help="(a) how long they move them")
    ap.add_argument("--think", type=float, default=1.0, help="(a), (c) the most a session waits between two moves, s")
    ap.add_argument("--smollm2", type=int, default=3, help="(b) sessions opening smollm2 at once (0: skip)")
    ap.add_argument("--timeout", type=float, default=900, help="(b) the most to wait for a page, s")
    ap.add_argument("--redraw-timeout", type=float, default=120,
                    help="(a), (c) a redraw not shown within this many seconds counts as slow")
    ap.add_argument("--smollm2-moves", type=int, default=0, help="(c) smollm2 sessions moving sliders (0: skip)")
    ap.add_argument("--smollm2-seconds", type=float, default=600, help="(c) how long they move them")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from engine.hardware import machine

    print(machine.header(), flush=True)
    out = {}
    if args.sessions:
        out["minilm"] = moving(args.sessions, args.seconds, args.think, args.redraw_timeout, "minilm", "ui.serve")
        if not args.json:
            print_moving("(a)", out["minilm"], 2.5, timeline=False)
    if args.smollm2:
        out["smollm2"] = b = smollm2_at_once(args.smollm2, args.timeout)
        if not args.json:
            print_at_once(b)
    if args.smollm2_moves:
        out["smollm2_moves"] = moving(args.smollm2_moves, args.smollm2_seconds, args.think, args.redraw_timeout,
                                      "smollm2", "streamlit")
        if not args.json:
            print_moving("(c)", out["smollm2_moves"], 6, timeline=True)
    if args.json:
        print(json.dumps(out, indent=2))


def print_at_once(b: dict) -> None:
    charts = [r["first_chart_s"] for r in b["sessions"]]
    fulls = [r["full_protocol_s"] for r in b["sessions"]]
    print(f"(b) {len(charts)} sessions opening smollm2 at once: first chart "
          f"{', '.join(f'{c:.1f}' for c in charts)} s; full protocol "
          f"{', '.join('not reached' if f is None else f'{f:.1f}' for f in fulls)} s; server peak "
          f"{b['server_peak_bytes'] / GIB:.2f} GiB (goals: each first chart within 60 s, under 6 GiB)", flush=True)
    for r in b["sessions"]:
        for e in r["errors"]:
            print(f"    ! {e}")

if __name__ == "__main__":
    main()
