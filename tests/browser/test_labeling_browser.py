"""What annotators do, in a real Chromium against `streamlit run`: label by mouse and keyboard, undo,
role limits, and inert XSS. Skips when /usr/bin/chromium is absent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from labeling_seed import XSS_PROMPT, XSS_RESPONSE
from sqlalchemy import select

from rlhf.schema import Label
from rlhf.store import shown_left_for

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _expect():
    from playwright.sync_api import expect

    return expect


def _button(page, label: str):
    return page.locator("button", has_text=re.compile(rf"^{re.escape(label)}"))


def _current_id(page) -> int:
    heading = page.get_by_text(re.compile(r"^Comparison #\d+$")).first
    _expect()(heading).to_be_visible()
    return int(heading.inner_text().split("#")[1])


def _wait_selected(page, label: str) -> None:
    _expect()(_button(page, label)).to_have_attribute("data-testid", "stBaseButton-primary")


def _select(page, label: str, act) -> None:
    """Do `act` (a click or a key press that selects `label`) until the button shows selected.

    On a loaded machine a key press or click landing while Streamlit reruns can be dropped; choosing
    a side or a strength is idempotent, so doing it again is safe (submit is not, and never retried)."""
    for _ in range(3):
        act()
        try:
            _expect()(_button(page, label)).to_have_attribute("data-testid", "stBaseButton-primary", timeout=10_000)
            return
        except AssertionError:
            continue
    _wait_selected(page, label)


def _wait_next(page, previous: int) -> int:
    _expect()(page.get_by_text(re.compile(r"^Comparison #\d+$")).first).not_to_have_text(f"Comparison #{previous}")
    return _current_id(page)


def _log_in(page, url: str, token: str, path: str = "") -> None:
    page.goto(f"{url}/{path}?token={token}")
    page.get_by_text("Logged in as").wait_for()


def test_xss_strings_render_as_inert_text(app, page):
    _log_in(page, app.url, app.seed.annotator_tokens[1])
    assert _current_id(page) == app.seed.comparison_ids[0]  # the comparison holding the XSS strings
    expect = _expect()
    for literal in (XSS_PROMPT, XSS_RESPONSE, "<script>alert(9)</script>"):  # prompt, response, guidelines
        expect(page.get_by_text(literal, exact=False).first).to_be_visible()
    assert page.locator("img[src='x']").count() == 0
    assert page.locator("script", has_text="alert(").count() == 0
    page.wait_for_timeout(500)  # give any injected handler a chance to fire
    assert page.dialogs == []
    page.locator("button", has_text="Log out").click()  # gives the in-flight item back
    page.get_by_text("Log in with your token").wait_for()


def test_annotator_labels_by_mouse_and_keyboard_then_undoes(app, page):
    ARTIFACTS.mkdir(exist_ok=True)
    aid = app.seed.annotator_ids[0]
    _log_in(page, app.url, app.seed.annotator_tokens[0])
    expect = _expect()
    expect(page.get_by_text("Keys:")).to_be_visible()  # shortcut help on the page
    done: dict[int, tuple[str, int | None, str | None]] = {}  # comparison -> (side, strength, rationale)

    # 1) mouse: A is better, "Better", a rationale, Submit.
    cid = _current_id(page)
    _select(page, "A is better", _button(page, "A is better").click)
    _select(page, "Better", _button(page, "Better").click)
    page.get_by_label("Rationale (optional)").fill("more complete")
    page.get_by_label("Rationale (optional)").press("Enter")
    page.screenshot(path=str(ARTIFACTS / "labeling.png"), full_page=True)
    _button(page, "Submit").click()
    done[cid] = ("left", 2, "more complete")
    cid = _wait_next(page, cid)

    # 2) keyboard: B, strength 4, Enter.
    page.get_by_text("Prompt", exact=True).click()  # focus the page, not a text box
    _select(page, "B is better", lambda: page.keyboard.press("b"))
    _select(page, "Significantly better", lambda: page.keyboard.press("4"))
    page.keyboard.press("Enter")
    done[cid] = ("right", 3, None)
    cid = _wait_next(page, cid)

    # 3) keyboard: tie, Enter.
    _select(page, "Tie", lambda: page.keyboard.press("t"))
    page.keyboard.press("Enter")
    done[cid] = ("tie", None, None)
    cid = _wait_next(page, cid)

    # 4) keyboard: both bad, Enter; then U undoes it and brings it back, pre-selected.
    _select(page, "Both bad", lambda: page.keyboard.press("x"))
    page.keyboard.press("Enter")
    undone = cid
    cid = _wait_next(page, cid)
    page.keyboard.press("u")
    expect(page.get_by_text(f"Comparison #{undone}", exact=True)).to_be_visible()
    _wait_selected(page, "Both bad")

    # The database holds exactly those labels (sides mapped to stored letters), plus the undone one.
    store = app.store()
    with store.session() as s:
        rows = list(s.scalars(select(Label).where(Label.annotator_id == aid)))
    submitted = {r.comparison_id: r for r in rows if r.status == "submitted"}
    assert set(submitted) == set(done)
    for comparison_id, (side, strength, rationale) in done.items():
        left = shown_left_for(aid, comparison_id)
        want = {"left": left, "right": "B" if left == "A" else "A"}.get(side, side)
        r = submitted[comparison_id]
        assert (r.choice, r.strength, r.rationale, r.shown_left) == (want, strength, rationale, left)
        assert r.time_spent_s is not None and r.time_spent_s > 0
    assert [(r.comparison_id, r.choice) for r in rows if r.status == "discarded"] == [(undone, "both_bad")]
    assert not page.dialogs


def test_annotator_cannot_open_admin_pages(app, page):
    expect = _expect()
    for path in ("annotators", "project", "quality", "data"):
        _log_in(page, app.url, app.seed.annotator_tokens[1], path)
        expect(page.get_by_text("Keys:")).to_be_visible()  # fell back to the labeling page
        assert page.get_by_role("heading", name="Annotators").count() == 0
        assert page.get_by_text("Add annotator").count() == 0
        assert page.get_by_text("admin", exact=True).count() == 0  # no other annotator's names either


def test_admin_sees_admin_pages(app, page):
    _log_in(page, app.url, app.seed.admin_token, "annotators")
    _expect()(page.get_by_role("heading", name="Annotators")).to_be_visible()
    _expect()(page.locator("button", has_text="Add annotator")).to_be_visible()
