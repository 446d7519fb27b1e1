"""Drive the running labeling app like annotators do: `streamlit run` in its own process group
(so a kill -9 takes the whole server down), and one headless Chromium with a browser context per
annotator, driven concurrently through Playwright's async API.

An annotator's label is *acknowledged* when, after the Submit click, the page shows the next state
(the heading moves off `Comparison #N` to another comparison or to "Your queue"). The app renders
that heading only in the run after the submit callback returned, i.e. after `save_label` committed,
so an acknowledged label must be in the store. Every wait is on visible state, with generous
timeouts; there are no fixed sleeps."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rlhf import schema

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000  # one visible-state wait; a loaded 2-core machine runs app, Chromium and pytest at once
HEADING = re.compile(r"^(Comparison #\d+|Your queue)$")
# (screen side, button) chosen per label; A/B also need a strength (button text, 0-3).
SIDES = (("left", "A is better"), ("right", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))
STRENGTHS = tuple(s.capitalize() for s in schema.STRENGTHS)
JUDGEMENT = re.compile("^(" + "|".join(re.escape(b) for _, b in SIDES) + "|" + "|".join(STRENGTHS) + ")")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerKilled(Exception):
    """The app server was SIGKILLed while this annotator was waiting on it."""


class AppServer:
    """`streamlit run labeling_ui/streamlit_app.py` on one loopback port, restartable on the same port."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log_path = env, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.generation = 0  # bumped by every start
        self.up = asyncio.Event()  # set while a healthy server is serving
        self.killed = asyncio.Event()  # set by the kill of the current generation
        self.kills = 0

    async def start(self, timeout_s: float = 90) -> None:
        with self.log_path.open("a") as log:
            log.write(f"\n==== start {self.generation + 1} ====\n")
            log.flush()
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "streamlit", "run", str(REPO / "labeling_ui" / "streamlit_app.py"),
                    "--server.address", "127.0.0.1", "--server.port", str(self.port),
                    "--server.headless", "true", "--browser.gatherUsageStats", "false",
                    "--server.fileWatcherType", "none",
                ],
                cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill -9 takes every child with it
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(self._healthy):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start; log:\n{self.log_path.read_text()[-4000:]}")
            await asyncio.sleep(0.2)
        self.generation += 1
        self.killed = asyncio.Event()
        self.up.set()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def cpu_s(self) -> float:
        """CPU seconds (user + system) the running server process has used so far (Linux; else nan)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill9(self) -> None:
        """SIGKILL the server's whole process group (no cleanup, no atexit, no rollback)."""
        assert self.proc is not None
        self.up.clear()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.killed.set()
        self.proc.wait(timeout=30)
        self.kills += 1

    def stop(self) -> None:
        self.up.clear()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)


@dataclass
class Tally:
    """What the annotators saw, shared by all of them (one event loop, so no locks needed)."""

    acked: list[tuple[int, int]] = field(default_factory=list)  # (comparison, annotator)
    ack_ms: list[float] = field(default_factory=list)  # submit click -> next state visible
    errors: list[str] = field(default_factory=list)
    logins: int = 0
    acked_after_kill: int = 0  # acknowledged on screen just before the kill was noticed


async def _race(coro, killed: asyncio.Event):
    """Await `coro`, or raise ServerKilled as soon as the server is killed (the coroutine is cancelled)."""
    task = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(killed.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done() and not (task.exception() is not None and killed.is_set()):
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 (cancelled, or failed because the server went away)
        pass
    raise ServerKilled


class Annotator:
    """One annotator in its own browser context: log in with its token, label by clicking."""

    def __init__(self, browser, server: AppServer, annotator_id: int, token: str, tally: Tally, seed: int):
        self.browser, self.server, self.id, self.token, self.tally = browser, server, annotator_id, token, tally
        self.rng = random.Random(seed)
        self.page = None
        self.done = 0  # labels acknowledged
        self.generation: int | None = None  # the server generation this page is logged in to

    async def open(self) -> None:
        context = await self.browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = await context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)

    def _heading(self):
        return self.page.get_by_text(HEADING).first

    def _button(self, label: str):
        return self.page.locator("button", has_text=re.compile(rf"^{re.escape(label)}"))

    async def log_in(self) -> None:
        from playwright.async_api import expect

        await self.page.goto(f"{self.server.url}/?token={self.token}")
        await expect(self.page.get_by_text("Logged in as")).to_be_visible(timeout=TIMEOUT_MS)
        await expect(self._heading()).to_be_visible(timeout=TIMEOUT_MS)
        self.tally.logins += 1

    async def ensure_logged_in(self, killed: asyncio.Event) -> None:
        if self.generation != self.server.generation:
            generation = self.server.generation
            await _race(self.log_in(), killed)
            self.generation = generation

    async def _select(self, label: str) -> None:
        """Click until the button shows selected: a click landing while Streamlit reruns can be
        dropped on a loaded machine; choosing is idempotent (Submit never is, and is never retried)."""
        from playwright.async_api import expect

        button = self._button(label)
        for attempt in range(4):
            await button.click()
            try:
                await expect(button).to_have_attribute(
                    "data-testid", "stBaseButton-primary", timeout=15_000 if attempt < 3 else TIMEOUT_MS
                )
                return
            except AssertionError:
                if attempt == 3:
                    raise

    async def label_one(self, state: dict) -> bool:
        """Judge the comparison on screen and submit; True once acknowledged, False if the queue is empty."""
        from playwright.async_api import expect

        heading = (await self._heading().inner_text()).strip()
        if heading == "Your queue":
            return False
        cid = int(heading.split("#")[1])
        # The run that drew this item has also drawn its buttons (none selected) before we judge, so
        # a "selected" below is this item's, not a stale one left over from the previous item.
        selected = self.page.locator('button[data-testid="stBaseButton-primary"]', has_text=JUDGEMENT)
        await expect(selected).to_have_count(0, timeout=TIMEOUT_MS)
        side, button = self.rng.choice(SIDES)
        await self._select(button)
        if side in ("left", "right"):
            await self._select(self.rng.choice(STRENGTHS))
        state.update(cid=cid, t0=time.perf_counter())  # from here on, a kill may or may not have saved it
        await self._button("Submit").click()
        await expect(self._heading()).not_to_have_text(f"Comparison #{cid}", timeout=TIMEOUT_MS)
        self._ack(state, time.perf_counter())
        return True

    def _ack(self, state: dict, t1: float | None) -> None:
        self.tally.acked.append((state["cid"], self.id))
        if t1 is not None:
            self.tally.ack_ms.append((t1 - state["t0"]) * 1e3)
        state.clear()
        self.done += 1

    async def _was_acked_before_kill(self, state: dict) -> bool:
        """After a kill: does the (now stale) page already show the next state for the submit in flight?

        The dead server cannot render anything new, so a heading off `Comparison #cid` was drawn
        before the kill, after the commit. Unsure (page already reloading, element gone) = not acked."""
        if "cid" not in state:
            return False
        try:
            text = (await self._heading().inner_text(timeout=2_000)).strip()
        except Exception:  # noqa: BLE001 (no heading: not acknowledged)
            return False
        return text != f"Comparison #{state['cid']}"

    async def run(self, n_labels: int | None, stop: asyncio.Event | None = None) -> None:
        """Label `n_labels` items (or until `stop`), logging in again after every server kill."""
        while (n_labels is None or self.done < n_labels) and not (stop and stop.is_set()):
            await self.server.up.wait()
            killed = self.server.killed
            try:
                await self.ensure_logged_in(killed)
                state: dict = {}
                try:
                    if not await _race(self.label_one(state), killed):
                        self.tally.errors.append(f"annotator {self.id}: queue empty after {self.done} labels")
                        return
                except ServerKilled:
                    if await self._was_acked_before_kill(state):
                        self._ack(state, None)
                        self.tally.acked_after_kill += 1
                    raise
            except ServerKilled:
                self.generation = None  # the new server has no session for us: log in again
                continue


async def launch_browser(playwright):
    return await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
