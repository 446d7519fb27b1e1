"""Locating the app's own widgets, and waiting for an idle app, in the browser tests.

Streamlit draws chrome of its own next to the app: while a script (or fragment) run has taken over
500 ms, its header's status widget holds a "Stop" button, on a changed script a "Rerun" one, and a
"Deploy" one on localhost. A locator by role and name ("button", name="Stop") matches those too, so
on a loaded machine it fails in strict mode. The app's buttons carry a `key=`, for which Streamlit
puts a class `st-key-<key>` on the element's container: locate them by that, never by label."""

from __future__ import annotations

import re

# No run in progress: Streamlit mounts its status widget once a run has taken 500 ms, and marks the
# elements in a run's scope `data-stale="true"` from the run's start until the run redraws them.
_IDLE_JS = """() => document.querySelector('[data-testid="stStatusWidget"]') === null
    && document.querySelector('[data-stale="true"]') === null"""


def key_class(key: str) -> str:
    """The CSS class Streamlit's frontend gives the container of the element made with `key=key`."""
    return "st-key-" + re.sub(r"[^a-zA-Z0-9_-]", "-", key.strip())


def app_button(page, key: str):
    """The app's own button (st.button or st.form_submit_button) made with `key=key`: exact, and never
    Streamlit's chrome, whatever the button's label says."""
    return page.locator(f".{key_class(key)}").get_by_role("button")


def wait_for_idle(page, timeout_ms: float | None = None) -> None:
    """Wait until no script or fragment run is in progress (no status widget, no stale element).

    Act on the page after this instead of retrying: a run in progress is about to redraw or remove
    what is on screen."""
    page.wait_for_function(_IDLE_JS, timeout=timeout_ms)


def click_app_button(page, key: str) -> None:
    """Click the app's button made with `key=key` once the app is idle."""
    wait_for_idle(page)
    app_button(page, key).click()
