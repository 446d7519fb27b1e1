"""Browser fixtures: a seeded data home, the app served by `streamlit run` on a free loopback port,
and Debian's Chromium driven by Playwright. Everything skips with a reason when Chromium is absent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from labeling_seed import Seeded, seed_labeling

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    url: str
    home: Path
    seed: Seeded

    def store(self):
        from rlhf.store import Store

        return Store(f"sqlite:///{self.home / 'rlhf.db'}")


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="browser tests need the `playwright` Python package")
    return CHROMIUM


@pytest.fixture(scope="module")
def app(chromium_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The app on a temporary data home: 6 comparisons (one with XSS strings), an admin, two annotators."""
    home = tmp_path_factory.mktemp("browser") / "home"
    env = {**os.environ, "RLHF_HOME": str(home)}
    env.pop("RLHF_DB_URL", None)
    old = os.environ.get("RLHF_HOME")
    os.environ["RLHF_HOME"] = str(home)
    try:
        from rlhf.store import Store

        store = Store()
        store.init()
        seed = seed_labeling(store, n_prompts=6, required=1, n_annotators=2, xss=True)
        store.set_setting("guidelines", "Prefer the **helpful**, honest answer. <script>alert(9)</script>")
        store.engine.dispose()
    finally:
        if old is None:
            os.environ.pop("RLHF_HOME", None)
        else:
            os.environ["RLHF_HOME"] = old
    port = _free_port()
    log = open(home / "streamlit.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "streamlit", "run", str(REPO / "labeling_ui" / "streamlit_app.py"),
            "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        ],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start; log:\n{(home / 'streamlit.log').read_text()}")
            time.sleep(0.2)
        yield App(url, home, seed)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(chromium_path: Path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(chromium_path),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context per test; any JavaScript dialog (alert) is recorded, then dismissed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.dialogs = []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    # Generous waits: a 2-core CI machine running the app, Chromium and pytest at once is slow, and
    # Playwright's `expect` defaults to 5 s.
    pg.set_default_timeout(30_000)
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    yield pg
    context.close()
