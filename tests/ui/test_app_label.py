"""The labeling page in-process: choose, strength, submit, skip, undo; stored sides; escaping."""

from __future__ import annotations

import pytest
from labeling_seed import XSS_PROMPT, XSS_RESPONSE, texts
from sqlalchemy import select

from rlhf.schema import Label
from rlhf.store import shown_left_for


def _labels(store):
    with store.session() as s:
        return list(s.scalars(select(Label).order_by(Label.id)))


@pytest.fixture
def at(open_app, seeded):
    return open_app(seeded.annotator_tokens[0])


def test_page_shows_prompt_responses_controls_and_help(at, seeded):
    assert not at.exception
    item = at.session_state["item"]
    assert item.id == seeded.comparison_ids[0]
    shown = texts(at)
    assert XSS_PROMPT in shown and XSS_RESPONSE in shown  # as literal Markdown source
    assert "Keys:" in shown and "`Enter` submit" in shown
    labels = [b.label for b in at.button]
    for want in ("A is better", "B is better", "Tie", "Both bad", "Negligibly better", "Significantly better",
                 "Submit", "Skip", "Undo last"):  # fmt: skip
        assert want in labels
    assert [m.value for m in at.metric] == ["0", "4"]  # done today, remaining


def test_no_element_allows_raw_html(at):
    # Every Markdown element on the page is rendered with raw HTML disabled.
    assert at.markdown and all(not m.proto.allow_html for m in at.markdown)
    assert all(not m.proto.allow_html for m in at.caption)


def test_submit_needs_a_choice_and_a_strength(at, store):
    at.button(key="submit").click().run()
    assert "Pick A, B, tie or both bad" in at.warning[0].value
    at.button(key="choose_left").click().run()
    at.button(key="submit").click().run()
    assert "Pick a strength" in at.warning[0].value
    assert _labels(store) == []


@pytest.mark.parametrize("side", ["left", "right"])
def test_submit_stores_the_side_seen_as_the_stored_letter(at, store, seeded, side):
    item_id = at.session_state["item"].id
    at.button(key=f"choose_{side}").click().run()
    at.button(key="strength_3").click().run()
    at.text_input(key="rationale").input("clearer <b>answer</b>").run()
    at.button(key="submit").click().run()
    assert not at.exception
    (label,) = _labels(store)
    shown_left = shown_left_for(seeded.annotator_ids[0], item_id)
    assert label.shown_left == shown_left
    assert label.choice == (shown_left if side == "left" else {"A": "B", "B": "A"}[shown_left])
    assert (label.strength, label.rationale, label.status) == (3, "clearer <b>answer</b>", "submitted")
    assert label.time_spent_s is not None and label.time_spent_s >= 0
    # The next item is on screen at once, with a fresh form.
    assert at.session_state["item"].id == seeded.comparison_ids[1]
    assert at.session_state["side"] is None and at.text_input(key="rationale").value == ""
    assert [m.value for m in at.metric] == ["1", "3"]


def test_tie_carries_no_strength(at, store):
    at.button(key="strength_1").click().run()
    at.button(key="choose_tie").click().run()
    assert at.button(key="strength_1").disabled
    at.button(key="submit").click().run()
    (label,) = _labels(store)
    assert (label.choice, label.strength) == ("tie", None)


def test_skip_then_queue_end_then_revisit(at, store, seeded):
    for _ in seeded.comparison_ids:
        at.button(key="skip").click().run()
    assert _labels(store) == []
    assert "Nothing left in your queue" in at.success[0].value
    at.button[0].click().run()  # "Show the 4 skipped item(s) again"
    assert at.session_state["item"].id == seeded.comparison_ids[0]


def test_undo_discards_and_brings_the_item_back_prefilled(at, store, seeded):
    first = at.session_state["item"].id
    at.button(key="choose_right").click().run()
    at.button(key="strength_0").click().run()
    at.button(key="submit").click().run()
    at.button(key="undo").click().run()
    (label,) = _labels(store)
    assert label.status == "discarded"
    assert at.session_state["item"].id == first
    assert (at.session_state["side"], at.session_state["strength"]) == ("right", 0)
    assert "Undone" in at.info[0].value
    # Relabel: the same row becomes submitted again; nothing is duplicated.
    at.button(key="choose_tie").click().run()
    at.button(key="submit").click().run()
    (label,) = _labels(store)
    assert (label.status, label.choice) == ("submitted", "tie")


def test_undo_with_nothing_to_undo(at):
    at.button(key="undo").click().run()
    assert "Nothing to undo" in at.info[0].value


def test_labelled_everything(at, store, seeded):
    for _ in seeded.comparison_ids:
        at.button(key="choose_both_bad").click().run()
        at.button(key="submit").click().run()
    assert len(_labels(store)) == 4
    assert "Nothing left in your queue" in at.success[0].value


def test_annotators_only_see_their_own_queue(open_app, seeded, store):
    # annotator2 labels item 1 (required 1): it is gone from annotator1's queue.
    store.save_label(seeded.comparison_ids[0], seeded.annotator_ids[1], "A")
    at = open_app(seeded.annotator_tokens[0])
    assert at.session_state["item"].id == seeded.comparison_ids[1]
    assert "annotator2" not in texts(at)


def test_raw_text_toggle_shows_responses_verbatim(at):
    at.sidebar.toggle[0].set_value(True).run()
    assert XSS_RESPONSE in [c.value for c in at.code]


def test_guidelines_panel(open_app, seeded, store):
    store.set_setting("guidelines", "Prefer **honest** answers.")
    at = open_app(seeded.annotator_tokens[0])
    assert "Prefer **honest** answers." in texts(at)
