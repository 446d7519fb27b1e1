"""The Reward model page in a real Chromium: an admin opens a run, reads the report, browses misranked
pairs (inert XSS), scores typed responses and traces one; screenshots go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_ui import click_app_button
from reward_run import XSS_PROMPT, write_fake_reward_run

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _expect():
    from playwright.sync_api import expect

    return expect


def _screenshot(page, name: str) -> None:
    # Streamlit scrolls inside its main container, so a "full page" shot is one viewport: make it tall.
    page.wait_for_timeout(800)  # let Vega finish drawing
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_admin_inspects_a_reward_run(app, page, tiny_model_dir):
    ARTIFACTS.mkdir(exist_ok=True)
    write_fake_reward_run(app.home / "runs" / "reward" / "20260101-120000-demo", tiny_model_dir)
    expect = _expect()
    page.set_viewport_size({"width": 1400, "height": 2200})
    page.goto(f"{app.url}/reward?token={app.seed.admin_token}")
    expect(page.get_by_role("heading", name="Reward model")).to_be_visible()
    expect(page.get_by_text("+20.0 pts vs before training")).to_be_visible()
    expect(page.get_by_text("Expected calibration error")).to_be_visible()
    expect(page.locator("[data-testid='stVegaLiteChart']:visible")).to_have_count(5)  # 4 slices + reliability
    _screenshot(page, "reward_inspector.png")

    page.get_by_role("tab", name="Training curves").click()
    expect(page.get_by_text("Pairwise accuracy", exact=True)).to_be_visible()
    _screenshot(page, "reward_inspector_curves.png")

    # Misranked pairs: the worst first, user text shown literally, nothing executed.
    page.get_by_role("tab", name="Misranked pairs").click()
    expect(page.get_by_text("#1 · comparison 13 · gap 1.500")).to_be_visible()
    expect(page.get_by_text("<script>alert('p')</script>", exact=False).first).to_be_visible()
    assert page.locator("img[src='x']").count() == 0
    _screenshot(page, "reward_inspector_misranked.png")
    click_app_button(page, "rw_load_0")  # the worst pair's

    # Try it: the pair was loaded; score it and trace the chosen response.
    page.get_by_role("tab", name="Try it").click()
    expect(page.get_by_label("Prompt")).to_have_value(XSS_PROMPT)
    click_app_button(page, "rw_score_button")
    expect(page.get_by_text("Reward per token prefix")).to_be_visible(timeout=60_000)  # first load imports torch
    click_app_button(page, "rw_trace_button")
    expect(page.get_by_text("Prefix scores of Response 1 as a table")).to_be_visible()
    _screenshot(page, "reward_inspector_try.png")
    assert page.dialogs == []
