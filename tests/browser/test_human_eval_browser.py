"""Human evaluation in a real Chromium: the admin queues a PPO run's held-out pairs on the PPO runs page,
an annotator labels them blind in the normal labeling page, and the admin reads the tuned policy's
win rate by people with its 95% interval. Skips when /usr/bin/chromium is absent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from app_ui import app_button, click_app_button, wait_for_idle
from ppo_run import write_fake_ppo_run

from rlhf.human_eval import evaluation_source
from rlhf.store import shown_left_for

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
RUN_ID = "20260105-120000-heval"
HEADING = re.compile(r"^Comparison #\d+$")


def _expect():
    from playwright.sync_api import expect

    return expect


def _open_human_eval_tab(page, url: str, token: str) -> None:
    page.goto(f"{url}/ppo?token={token}")
    _expect()(page.get_by_role("heading", name="PPO runs")).to_be_visible()
    wait_for_idle(page)
    page.get_by_role("tab", name="Human evaluation").click()


def _current_id(page) -> int:
    heading = page.get_by_text(HEADING).first
    _expect()(heading).to_be_visible()
    return int(heading.inner_text().split("#")[1])


def _click_and_see_selected(page, key: str) -> None:
    click_app_button(page, key)
    _expect()(app_button(page, key)).to_have_attribute("data-testid", "stBaseButton-primary")


def test_admin_queues_annotator_labels_blind_admin_sees_win_rate(app, page):
    ARTIFACTS.mkdir(exist_ok=True)
    expect = _expect()
    write_fake_ppo_run(app.home / "runs" / "ppo" / RUN_ID)  # report.json: 2 held-out pairs, all distinct
    store = app.store()
    # The ordinary comparisons are already done (by the second annotator): the first one's queue will
    # hold only the evaluation.
    for cid in app.seed.comparison_ids:
        store.save_label(cid, app.seed.annotator_ids[1], "A", 1)

    # 1) the admin queues the evaluation: both held-out prompts, one label each.
    page.set_viewport_size({"width": 1400, "height": 1600})
    _open_human_eval_tab(page, app.url, app.seed.admin_token)
    expect(page.get_by_text("No human evaluation queued for this run yet.")).to_be_visible()
    click_app_button(page, "ppo_human_eval_queue")
    expect(page.get_by_text("Queued 2 comparisons (1 label(s) each) from 2 held-out prompts")).to_be_visible()
    with store.session() as s:
        from sqlalchemy import select

        from rlhf.schema import Comparison

        queued = list(s.scalars(select(Comparison.id).where(Comparison.source == evaluation_source(RUN_ID))))
    assert len(queued) == 2

    # 2) an annotator labels them in the normal labeling page: the tuned policy wins one, one tie.
    aid = app.seed.annotator_ids[0]
    page.goto(f"{app.url}/?token={app.seed.annotator_tokens[0]}")
    page.get_by_text("Logged in as").wait_for()
    for outcome in ("win", "tie"):
        cid = _current_id(page)
        assert cid in queued
        comp = store.get_comparison(cid)
        policy = "A" if comp.completion_a.model == f"ppo:{RUN_ID}" else "B"
        left = shown_left_for(aid, cid)
        left_text = (comp.completion_a if left == "A" else comp.completion_b).text
        wait_for_idle(page)
        # What the annotator sees is the response itself, never which model wrote it.
        expect(page.locator(".st-key-response_A")).to_contain_text(left_text.split(" <img")[0])
        body = page.locator("body").inner_text()
        assert "ppo:" not in body and "reference:" not in body and RUN_ID not in body and "Tuned" not in body
        if outcome == "win":
            _click_and_see_selected(page, "choose_left" if left == policy else "choose_right")
            _click_and_see_selected(page, "strength_2")
            page.screenshot(path=str(ARTIFACTS / "human_eval_labeling.png"), full_page=True)
        else:
            _click_and_see_selected(page, "choose_tie")
        click_app_button(page, "submit")
        expect(page.get_by_text(f"Comparison #{cid}", exact=True)).to_have_count(0)
    expect(page.get_by_text("Nothing left in your queue. Thank you!")).to_be_visible()

    # 3) the admin sees the win rate by people: (1 + 0.5) / 2 = 0.75. Wilson 95% by hand, z^2 = 3.841459:
    # centre (0.75 + 0.960365) / 2.920729 = 0.585596, half 0.671053 * sqrt(0.09375 + 0.240091) = 0.387727
    # -> [0.1979, 0.9733].
    _open_human_eval_tab(page, app.url, app.seed.admin_token)
    expect(
        page.get_by_text("Win rate by people 0.75 [0.20, 0.97] (n=2) · W/T/L 1/1/0, 95% Wilson interval")
    ).to_be_visible()
    waiting = page.get_by_test_id("stMetric").filter(has_text="Waiting for labels")
    expect(waiting.get_by_test_id("stMetricValue")).to_have_text("0")
    people = page.get_by_test_id("stMetric").filter(has_text="Win rate by people")
    expect(people.get_by_test_id("stMetricValue")).to_have_text("0.75")
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / "human_eval_results.png"), full_page=True)
    assert page.dialogs == []
