"""Start the app headless on a free port, and Debian's chromium driven by Playwright."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_server(command: list[str] | None = None, port: int | None = None, timeout: float = 120):
    """Yields (url, process); `command` defaults to `python -m streamlit run app.py`."""
    port = port or free_port()
    cmd = command or [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                      "--server.address", "127.0.0.1", "--server.headless", "true"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PORT": str(port)}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"the app exited with {proc.returncode}") from None
                if time.time() > deadline:
                    raise TimeoutError("the app did not answer in time") from None
                time.sleep(0.3)
        yield url, proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def chromium(playwright):
    exe = shutil.which("chromium")
    if exe is None:
        raise RuntimeError("chromium not found: run `make browser` (apt-get install chromium)")
    return playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)


def metric(page, label: str) -> str:
    """The shown value of the st.metric with this label."""
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


def wait_idle(page, timeout: float = 120_000, selector: str = ".js-plotly-plot"):
    """Until `selector` (default: a plotly chart) is drawn and the app has finished its run."""
    page.wait_for_selector(selector, timeout=timeout)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout)
