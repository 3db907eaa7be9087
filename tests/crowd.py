"""Several people on one app server: browser sessions driven at once, and the server's memory.

Each `Person` opens the Explore page from a link with its own recipe, then moves the bit-width
and sparsity sliders by keyboard, one step at a time, and after each step waits until its
page shows the new recipe: the recipe in the caption, the compressed size that recipe has
(counted from minilm's config alone, engine.footprint), and a link that holds it. Anything
else it sees (an error box, another recipe, a link that disagrees) is written down.
Playwright's async API drives one chromium with a context per person; `ServerMemory` samples the
resident memory of the server and its children from /proc.
"""
from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from browser import CHROMIUM_ARGS

BITS = (2, 3, 4, 5, 6, 7, 8, 16)  # the bit-width slider's stops
SPARSITY_STEP, SPARSITY_MAX = 0.05, 0.9
SHOWN = """() => {
  const cap = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
      .find(c => c.innerText.includes('recipe: '));
  const box = [...document.querySelectorAll('[data-testid="stMetric"]')]
      .find(m => m.innerText.includes('Compressed'));
  const value = box && box.querySelector('[data-testid="stMetricValue"]');
  return {recipe: cap ? cap.innerText.split('recipe: ')[1].trim() : null,
          compressed: value ? value.innerText.trim() : null,
          errors: [...document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]')]
              .map(e => e.innerText.trim().split('\\n')[0])};
}"""


# ---------------------------------------------------------------------------------------
# The server's memory
# ---------------------------------------------------------------------------------------


def session_rss(sid: int) -> int:
    """Resident bytes of every process in session `sid` (the app server, started in a session of
    its own by browser.app_server, and its children)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) != sid:  # state, ppid, pgrp, session
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
    return total


class ServerMemory:
    """Samples session_rss(sid) every `every` seconds in a thread while in the `with` block."""

    def __init__(self, sid: int, every: float = 0.25):
        self.sid, self.every = sid, every
        self.start = self.peak = self.last = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.last = session_rss(self.sid)
            self.peak = max(self.peak, self.last)
            self._stop.wait(self.every)

    def __enter__(self) -> "ServerMemory":
        self.start = self.peak = self.last = session_rss(self.sid)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------
# One person
# ---------------------------------------------------------------------------------------


@dataclass
class Person:
    """One browser session: the recipe it holds (URL names: bits, sparsity, group, sym,
    layers), and what it saw."""

    name: str
    bits: int = 16
    sparsity: float = 0.0
    extra: dict = field(default_factory=dict)  # other URL parameters, kept as they are
    moves: int = 0
    redraws: list = field(default_factory=list)  # seconds from a key press to the new recipe shown
    errors: list = field(default_factory=list)  # error boxes seen
    crosstalk: list = field(default_factory=list)  # a recipe, size or link that is not this person's
    first_chart: float | None = None
    opened: dict = field(default_factory=dict)  # the link's parameters it opened with

    def __post_init__(self):
        self.opened = self.params()

    def params(self) -> dict:
        """The link's parameters for the recipe (the app leaves out what is at its default)."""
        p = dict(self.extra)
        if self.bits != 16:
            p["bits"] = str(self.bits)
        if self.sparsity:
            p["sparsity"] = str(round(self.sparsity, 2))
        return p

    def recipe(self):
        from engine.recipe import Recipe

        e = self.extra
        return Recipe(bits=self.bits, sparsity=round(self.sparsity, 2), group_size=int(e.get("group", 128)),
                      symmetric=e.get("sym", "true") == "true", group=e.get("layers", "all"))

    def expected(self, skeleton) -> dict:
        from engine import footprint
        from ui.charts import human_bytes

        r = self.recipe()
        return {"recipe": r.describe(), "compressed": human_bytes(footprint.predict(skeleton, r).compressed_bytes)}

    def move(self, rng: random.Random) -> tuple[str, str]:
        """Pick the next step (the widget key and the arrow) and take it in the recipe."""
        if rng.random() < 0.5:
            k = BITS.index(self.bits)
            step = rng.choice((-1, 1)) if 0 < k < len(BITS) - 1 else (1 if k == 0 else -1)
            self.bits = BITS[k + step]
            return "ctl_bits", "ArrowRight" if step > 0 else "ArrowLeft"
        up = self.sparsity < 1e-9 or (self.sparsity < SPARSITY_MAX - 1e-9 and rng.random() < 0.5)
        self.sparsity = round(self.sparsity + (SPARSITY_STEP if up else -SPARSITY_STEP), 2)
        return "ctl_sparsity", "ArrowRight" if up else "ArrowLeft"

    def check_link(self, url: str) -> None:
        got = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        want = self.params()
        same = got.keys() == want.keys() and all(
            float(got[k]) == float(v) if k == "sparsity" else got[k] == v for k, v in want.items())
        if not same:
            self.crosstalk.append(f"link {got} for {want}")


async def _shown(page, want: dict, timeout: float) -> dict:
    """Wait until the page shows `want` (recipe and compressed size) or an error box; what it shows."""
    deadline = time.perf_counter() + timeout
    while True:
        seen = await page.evaluate(SHOWN)
        if seen["errors"] or (seen["recipe"] == want["recipe"] and seen["compressed"] == want["compressed"]):
            return seen
        if time.perf_counter() > deadline:
            return seen
        await asyncio.sleep(0.05)


async def _drive(browser, url: str, person: Person, skeleton, seconds: float, seed: int, timeout: float,
                 think: float) -> None:
    context = await browser.new_context(viewport={"width": 1400, "height": 1600})
    page = await context.new_page()
    query = "&".join(f"{k}={v}" for k, v in person.params().items())
    t0 = time.perf_counter()
    try:
        await page.goto(f"{url}/?{query}", timeout=timeout * 1000)
        await page.wait_for_selector(".js-plotly-plot", timeout=timeout * 1000)
    except Exception as e:  # noqa: BLE001 -- a page that never draws is what is reported
        seen = await page.evaluate(SHOWN)
        person.errors.append(f"no chart after {time.perf_counter() - t0:.0f} s: {type(e).__name__}; "
                             f"showing {seen}")
        await context.close()
        return
    person.first_chart = time.perf_counter() - t0
    until = time.perf_counter() + seconds
    rng = random.Random(seed)
    want = person.expected(skeleton)
    seen = await _shown(page, want, timeout)
    while True:
        if seen["errors"]:
            person.errors.extend(e for e in seen["errors"] if e not in person.errors)
        if (seen["recipe"], seen["compressed"]) != (want["recipe"], want["compressed"]):
            person.crosstalk.append(f"showed {seen['recipe']!r} {seen['compressed']!r} for {want}")
        person.check_link(page.url)
        if time.perf_counter() > until:
            break
        await asyncio.sleep(think * rng.random())
        key, arrow = person.move(rng)
        want = person.expected(skeleton)
        t = time.perf_counter()
        await page.locator(f".st-key-{key} input[type=range]").press(arrow)
        seen = await _shown(page, want, timeout)
        person.moves += 1
        person.redraws.append(time.perf_counter() - t)
    await context.close()


async def _crowd(url: str, people: list[Person], seconds: float, timeout: float, think: float) -> None:
    from playwright.async_api import async_playwright

    from engine import footprint

    skeleton = footprint.open_skeleton("minilm")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        await asyncio.gather(*(_drive(browser, url, person, skeleton, seconds, k, timeout, think)
                               for k, person in enumerate(people)))
        await browser.close()


def crowd(url: str, people: list[Person], seconds: float, timeout: float = 120, think: float = 1.0) -> list[Person]:
    """Drive every person's session at once, each for `seconds` after its first chart; a step
    waits at most `timeout` seconds for its redraw, a person pauses up to `think` seconds
    between steps. Returns the people, with what each saw."""
    asyncio.run(_crowd(url, people, seconds, timeout, think))
    return people


def summary(people: list[Person]) -> dict:
    redraws = [s for p in people for s in p.redraws]
    return {"sessions": len(people), "moves": sum(p.moves for p in people),
            "median_redraw_s": statistics.median(redraws) if redraws else None,
            "slowest_redraw_s": max(redraws) if redraws else None,
            "errors": [e for p in people for e in p.errors], "crosstalk": [c for p in people for c in p.crosstalk]}


# people of the benchmark and the test: each opens its own recipe
PEOPLE = [
    dict(bits=8),
    dict(bits=4, sparsity=0.3),
    dict(bits=6, extra={"group": "64"}),
    dict(bits=3, extra={"sym": "false", "layers": "mlp"}),
    dict(bits=5, sparsity=0.5, extra={"layers": "attention"}),
]


def people(n: int) -> list[Person]:
    return [Person(f"session {k + 1}", **PEOPLE[k % len(PEOPLE)]) for k in range(n)]
