"""Logging in and out, by link and by form; deactivated accounts are turned away."""

from __future__ import annotations

from labeling_seed import texts


def test_visitor_sees_only_the_login_form(open_app, seeded):
    at = open_app()
    assert not at.exception
    assert at.title[0].value == "RLHF Workbench"
    assert len(at.text_input) == 1 and at.text_input[0].label == "Token"
    assert "Response A" not in texts(at)


def test_form_login_with_a_wrong_then_a_right_token(open_app, seeded):
    at = open_app()
    at.text_input[0].input("not-a-token")
    at.button[0].click().run()
    assert "not valid" in at.error[0].value
    at.text_input[0].input(seeded.annotator_tokens[0])
    at.button[0].click().run()
    assert not at.exception
    assert "Response A" in texts(at) and "Response B" in texts(at)


def test_token_link_logs_in_and_leaves_the_address_bar(open_app, seeded):
    at = open_app(seeded.annotator_tokens[0])
    assert at.session_state["user_id"] == seeded.annotator_ids[0]
    assert "token" not in at.query_params
    assert "Logged in as **annotator1** (annotator)" in texts(at)


def test_bad_link_shows_a_message(open_app, seeded):
    at = open_app("forged")
    assert "login link is not valid" in at.warning[0].value


def test_deactivated_annotator_is_logged_out_on_next_action(open_app, seeded, store):
    at = open_app(seeded.annotator_tokens[0])
    store.set_annotator_active(seeded.annotator_ids[0], False)
    at.run()
    assert "deactivated" in at.warning[0].value
    assert "user_id" not in at.session_state


def test_log_out_forgets_the_session(open_app, seeded):
    at = open_app(seeded.annotator_tokens[0])
    at.sidebar.button[0].click().run()
    assert "user_id" not in at.session_state
    assert at.text_input[0].label == "Token"
