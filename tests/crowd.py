"""Several people on one app server: browser sessions driven at once, and the server's memory.

Each `Person` opens the Explore page from a link with its own model and recipe, then moves the
bit-width and sparsity sliders by keyboard, one step at a time, and after each step waits until
its page shows the new recipe: the recipe in the caption, the compressed size that recipe has
(counted from the model's config alone, engine.drivers.footprint), and a link that holds it. When its
time is up it waits for its last move's redraw and checks that final page the same way.

What it sees is written down apart: an error box; cross-talk (a recipe, a size or a link that
was never its own); and a slow redraw (after `timeout` seconds the page still shows one of its
own earlier recipes and sizes: not wrong, only late; a throughput figure, for the benchmark).
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
from engine.models.loading import DEFAULT_MODEL  # a link leaves it out

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
    """Samples session_rss(sid) every `every` seconds in a thread while in the `with` block:
    `samples` holds (seconds since entering, bytes)."""

    def __init__(self, sid: int, every: float = 0.25):
        self.sid, self.every = sid, every
        self.start = self.peak = self.last = 0
        self.samples: list[tuple[float, int]] = []
        self._t0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.last = session_rss(self.sid)
            self.peak = max(self.peak, self.last)
            self.samples.append((time.perf_counter() - self._t0, self.last))
            self._stop.wait(self.every)

    def __enter__(self) -> "ServerMemory":
        self._t0 = time.perf_counter()
        self.start = self.peak = self.last = session_rss(self.sid)
        self.samples.append((0.0, self.start))
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
    """One browser session: the model and recipe it holds (URL names: model, bits, sparsity,
    group, sym, layers), and what it saw."""

    name: str
    bits: int = 16
    sparsity: float = 0.0
    extra: dict = field(default_factory=dict)  # other URL parameters, kept as they are
    model: str = DEFAULT_MODEL
    moves: int = 0
    redraws: list = field(default_factory=list)  # seconds from a key press to the new recipe shown
    slow: list = field(default_factory=list)  # redraws not done within the timeout: what the page still showed
    errors: list = field(default_factory=list)  # error boxes seen
    crosstalk: list = field(default_factory=list)  # a recipe, size or link that is not this person's
    first_chart: float | None = None
    final: dict | None = None  # what the page showed after the last move (None: it never drew)
    final_ok: bool = False  # whether that was its own last recipe, its size and a link holding it
    opened: dict = field(default_factory=dict)  # the link's parameters it opened with
    seen_own: set = field(default_factory=set)  # every recipe and size it has wanted so far

    def __post_init__(self):
        self.opened = self.params()

    def params(self) -> dict:
        """The link's parameters for the model and recipe (the app leaves out what is at its default)."""
        p = dict(self.extra)
        if self.model != DEFAULT_MODEL:
            p["model"] = self.model
        if self.bits != 16:
            p["bits"] = str(self.bits)
        if self.sparsity:
            p["sparsity"] = str(round(self.sparsity, 2))
        return p

    def recipe(self):
        from engine.recipe.recipe import Recipe

        e = self.extra
        return Recipe(bits=self.bits, sparsity=round(self.sparsity, 2), group_size=int(e.get("group", 128)),
                      symmetric=e.get("sym", "true") == "true", group=e.get("layers", "all"))

    def expected(self, skeleton) -> dict:
        from charts.figures import human_bytes
        from engine.drivers import footprint

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

    def check_link(self, url: str) -> bool:
        got = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        want = self.params()
        same = got.keys() == want.keys() and all(
            float(got[k]) == float(v) if k == "sparsity" else got[k] == v for k, v in want.items())
        if not same:
            self.crosstalk.append(f"link {got} for {want}")
        return same

    def check(self, seen: dict, want: dict, url: str, waited: float) -> bool:
        """Write down what the page shows after a move (or at the start): True when it is `want`
        with a link that holds it; an error box; one of this person's own earlier recipes and
        sizes after `waited` seconds (slow); or anything else (cross-talk)."""
        self.seen_own.update((("recipe", want["recipe"]), ("compressed", want["compressed"])))
        if seen["errors"]:
            self.errors.extend(e for e in seen["errors"] if e not in self.errors)
            return False
        if (seen["recipe"], seen["compressed"]) == (want["recipe"], want["compressed"]):
            return self.check_link(url)
        if {("recipe", seen["recipe"]), ("compressed", seen["compressed"])} <= self.seen_own | {
                ("recipe", None), ("compressed", None)}:
            self.slow.append(f"after {waited:.0f} s still {seen['recipe']!r} {seen['compressed']!r} for {want}")
        else:
            self.crosstalk.append(f"showed {seen['recipe']!r} {seen['compressed']!r} for {want}")
        return False


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
                 think: float, settle: float) -> None:
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
    t = time.perf_counter()
    person.check(await _shown(page, want, timeout), want, page.url, time.perf_counter() - t)
    while time.perf_counter() < until:
        await asyncio.sleep(think * rng.random())
        key, arrow = person.move(rng)
        want = person.expected(skeleton)
        t = time.perf_counter()
        await page.locator(f".st-key-{key} input[type=range]").press(arrow)
        seen = await _shown(page, want, timeout)
        person.moves += 1
        if person.check(seen, want, page.url, time.perf_counter() - t):
            person.redraws.append(time.perf_counter() - t)
    # the last move's page, however long its redraw takes (up to `settle`)
    t = time.perf_counter()
    person.final = await _shown(page, want, settle)
    person.final_ok = person.check(person.final, want, page.url, time.perf_counter() - t)
    await context.close()


async def _crowd(url: str, people: list[Person], seconds: float, timeout: float, think: float,
                 settle: float) -> None:
    from playwright.async_api import async_playwright

    from engine.drivers import footprint

    skeletons = {m: footprint.open_skeleton(m) for m in {p.model for p in people}}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        await asyncio.gather(*(_drive(browser, url, person, skeletons[person.model], seconds, k, timeout, think,
                                      settle) for k, person in enumerate(people)))
        await browser.close()


def crowd(url: str, people: list[Person], seconds: float, timeout: float = 120, think: float = 1.0,
          settle: float = 600) -> list[Person]:
    """Drive every person's session at once, each for `seconds` after its first chart; a step
    waits at most `timeout` seconds for its redraw (then it counts as slow, and the person moves
    on), a person pauses up to `think` seconds between steps, and at the end waits at most
    `settle` seconds for its last move's page. Returns the people, with what each saw."""
    asyncio.run(_crowd(url, people, seconds, timeout, think, settle))
    return people


def summary(people: list[Person]) -> dict:
    redraws = [s for p in people for s in p.redraws]
    return {"sessions": len(people), "moves": sum(p.moves for p in people),
            "median_redraw_s": statistics.median(redraws) if redraws else None,
            "slowest_redraw_s": max(redraws) if redraws else None,
            "slow": [s for p in people for s in p.slow],
            "unfinished": [f"{p.name}: after its last move {p.final}" for p in people if not p.final_ok],
            "errors": [e for p in people for e in p.errors], "crosstalk": [c for p in people for c in p.crosstalk]}


# people of the benchmark and the test: each opens its own recipe
PEOPLE = [
    dict(bits=8),
    dict(bits=4, sparsity=0.3),
    dict(bits=6, extra={"group": "64"}),
    dict(bits=3, extra={"sym": "false", "layers": "mlp"}),
    dict(bits=5, sparsity=0.5, extra={"layers": "attention"}),
]


def people(n: int, model: str = DEFAULT_MODEL) -> list[Person]:
    return [Person(f"session {k + 1}", **PEOPLE[k % len(PEOPLE)], model=model) for k in range(n)]
