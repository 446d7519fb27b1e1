"""The Reward model page in-process: admins only; summary and report numbers as the run folder holds
them; missing, partial and corrupted runs; "try it" and prefix scores equal the library's own."""

from __future__ import annotations

import os

import pytest
from labeling_seed import APP
from reward_run import HEAD, ROWS, XSS_PROMPT, copy_run, verdict_summary, write_fake_reward_run
from streamlit.testing.v1 import AppTest

from labeling_ui.reward_inspector import (
    curves_frame,
    learning,
    list_reward_runs,
    report_interval,
    slice_interval,
    slices_table,
)
from rlhf.reward import encode_pair_side, load_reward_model, score_prefixes, score_sequences
from rlhf.runs import read_json, write_json

PAGE = "app_pages/reward.py"
VERDICT_ICON = ":material/gpp_bad:"
# reward_run.ROWS: 3 of 5 held-out pairs right. Wilson 95% by hand (z = 1.96, z^2 = 3.8415):
# centre (0.6 + 0.38415) / 1.76829 = 0.55655, half 1.10840 * sqrt(0.048 + 0.038415) = 0.32583
# -> [0.2307, 0.8824]
HELD_OUT_TEXT = "0.60 [0.23, 0.88] (n=5)"


@pytest.fixture(scope="module")
def template(tmp_path_factory, tiny_model_dir):
    """One hand-made run folder per module; each test copies it into its own data home."""
    return write_fake_reward_run(tmp_path_factory.mktemp("reward-template") / "run", tiny_model_dir)


@pytest.fixture
def runs_root(home):
    return home / "runs" / "reward"


@pytest.fixture
def run(template, runs_root):
    return copy_run(template, runs_root, "20260101-120000-fake")


def _reward_page(open_app, seeded) -> AppTest:
    at = open_app(seeded.admin_token)
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _metrics(at: AppTest) -> dict[str, tuple[str, str | None]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def _verdicts(at: AppTest) -> list[str]:
    """The learning-verdict banners (st.error with the page's VERDICT_ICON)."""
    return [e.value for e in at.error if e.proto.icon == VERDICT_ICON]


def _errors(at: AppTest) -> list[str]:
    """Every other st.error: problems with files, models and inputs."""
    return [e.value for e in at.error if e.proto.icon != VERDICT_ICON]


def test_annotators_cannot_reach_the_page(open_app, seeded, run):
    annotator = open_app(seeded.annotator_tokens[0])
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        annotator.switch_page(PAGE)  # not in an annotator's navigation
    direct = AppTest.from_file(str(APP.parent / PAGE), default_timeout=30)
    direct.session_state["user_id"] = seeded.annotator_ids[0]
    direct.run()
    assert not direct.exception
    assert [e.value for e in direct.error] == ["This page is for admins only."]
    assert not direct.title and not direct.metric and not direct.selectbox


def test_no_runs_says_how_to_create_one(open_app, seeded):
    at = _reward_page(open_app, seeded)
    assert at.title[0].value == "Reward model"
    assert "rlhf train-reward" in at.info[0].value
    assert not at.error and not at.selectbox


def test_admin_sees_summary_and_report_numbers(open_app, seeded, run):
    at = _reward_page(open_app, seeded)
    assert _errors(at) == []
    assert at.selectbox(key="rw_run").value == str(run)
    m = _metrics(at)
    # summary.json: 0.6 after, 0.4 before -> +20.0 points; dropped 2 train + 1 test = 3.
    assert m["Held-out accuracy"] == ("60.0%", "+20.0 pts vs before training")
    assert m["Before training"][0] == "40.0%"
    assert m["Annotator agreement"][0] == "83.3%"  # (1 + 1 + 0.5) / 3 items with 2+ labels
    assert m["Pairs (train / held-out)"][0] == "40 / 5"
    assert m["Dropped as too long"][0] == "3"
    assert (m["Pairs / s"][0], m["Reward mean"][0], m["Reward std"][0]) == ("12.5", "0.250", "1.500")
    # eval_report.json: as the file says (its own values are checked in tests/test_reward.py) ...
    report = read_json(run / "eval_report.json")
    assert m["Expected calibration error"][0] == f"{report['calibration']['ece']:.3f}"
    assert m["corr(reward, length)"][0] == f"{report['length_bias']['pearson_reward_length']:+.2f}"
    # ... and by hand (reward_run.ROWS): chosen shorter in pairs 12, 14 (one right), longer in 11, 15 (both).
    # Wilson 95% by hand: 1/2 -> [0.09, 0.91]; 2/2 -> [0.34, 1.00] (as 1/1 [0.21, 1], 0/1 [0, 0.79], 3/3, 2/3).
    assert m["Accuracy, chosen is shorter"] == ("50.0%", "2 pairs · 95% [0.09, 0.91]")
    assert m["Accuracy, chosen is longer"] == ("100.0%", "2 pairs · 95% [0.34, 1.00]")
    table = next(d.value for d in at.dataframe if "group" in d.value.columns)
    assert list(table.columns) == ["group", "slice", "pairs", "accuracy", "95% interval"]
    got = {(g, s): (n, a, i) for g, s, n, a, i in table.itertuples(index=False)}
    assert got == {
        ("strength", "better"): (2, 0.5, "[0.09, 0.91]"),
        ("strength", "negligibly better"): (1, 0.0, "[0.00, 0.79]"),
        ("strength", "significantly better"): (1, 1.0, "[0.21, 1.00]"),
        ("strength", "slightly better"): (1, 1.0, "[0.21, 1.00]"),
        ("category", "advice"): (3, 1.0, "[0.44, 1.00]"),
        ("category", "code"): (2, 0.0, "[0.00, 0.66]"),
        ("agreement", "single"): (2, 0.5, "[0.09, 0.91]"),
        ("agreement", "split"): (1, 0.0, "[0.00, 0.79]"),
        ("agreement", "unanimous"): (2, 1.0, "[0.34, 1.00]"),
        ("chosen side", "A"): (3, pytest.approx(2 / 3), "[0.21, 0.94]"),
        ("chosen side", "B"): (2, 0.5, "[0.09, 0.91]"),
    }
    # The held-out accuracy with n, its interval and the untrained accuracy; the report's caption too.
    assert f"Held-out accuracy {HELD_OUT_TEXT}, 95% Wilson interval · untrained model 0.40 on the same pairs" in [
        md.value for md in at.markdown
    ]
    assert any(f"{HELD_OUT_TEXT} with its 95% interval" in c.value for c in at.caption)
    # summary.json is an old one (no `learning`): the verdict from 5 held-out pairs is "too small", in red.
    assert _verdicts(at) == [
        "**Learning verdict: too few held-out pairs to tell.** Held-out split too small to tell: 5 pairs "
        "(need >= 30); label more pairs or export with a larger --test-fraction"
    ]
    assert not any(md.value.startswith("Mode:") for md in at.markdown)  # an old run names no mode


def test_a_run_that_learned_nothing_gets_a_red_banner(open_app, seeded, run):
    # 55 of 100 held-out pairs right, untrained 0.50. Wilson 95% by hand: centre (0.55 + 0.019207) / 1.038415
    # = 0.54816, half 1.88749 * sqrt(0.002475 + 0.000096) = 0.09571 -> [0.4525, 0.6439]: not above 0.5.
    write_json(run / "summary.json", verdict_summary(0.55, 100, 0.5, mode="head", head=HEAD))
    at = _reward_page(open_app, seeded)
    assert _errors(at) == []
    [banner] = _verdicts(at)
    assert banner.startswith(
        "**Learning verdict: LEARNED NOTHING.** The reward model LEARNED NOTHING measurable: held-out accuracy "
        "0.55 [0.45, 0.64] (n=100) is not above max(chance, untrained accuracy 0.50)"
    )
    assert at.error[0].proto.icon == VERDICT_ICON  # the first error on the page: above everything else
    text = [md.value for md in at.markdown]
    assert (
        "Held-out accuracy 0.55 [0.45, 0.64] (n=100), 95% Wilson interval · untrained model 0.50 on the same pairs"
        in text
    )
    # The head's features and mode; validation 0.7 of 20 pairs = 14/20 -> Wilson [0.48, 0.85].
    assert (
        "Mode: **head** (score head only, on the frozen base model's features) · features: **[mean, max] of "
        "layer 12 over the response** · validation accuracy 0.70 [0.48, 0.85] (n=20) · chosen among 3 feature "
        "kinds · L2 0.01 · epochs 40"
    ) in text
    cands = next(d.value for d in at.dataframe if "chosen" in d.value.columns)
    assert cands.to_dict("records") == [
        {"features": "[mean, max] of layer 12 over the response", "validation accuracy": 0.7, "chosen": True},
        {"features": "[mean, max] of layer 8 over the response", "validation accuracy": 0.6, "chosen": False},
        {"features": "last token of the final layer", "validation accuracy": 0.55, "chosen": False},
    ]
    box = at.selectbox(key="rw_run")
    assert box.options[0].startswith(f"{run.name} · held-out accuracy 0.55 [0.45, 0.64] (n=100) · LEARNED NOTHING · ")


def test_a_run_that_learned_has_no_banner(open_app, seeded, run):
    # 80 of 100 right, untrained 0.5: Wilson [0.711, 0.867], above 0.5 (tests/test_stats.py has the numbers).
    write_json(run / "summary.json", verdict_summary(0.8, 100, 0.5, mode="full"))
    at = _reward_page(open_app, seeded)
    assert not at.error
    text = [md.value for md in at.markdown]
    assert (
        "Held-out accuracy 0.80 [0.71, 0.87] (n=100), 95% Wilson interval · untrained model 0.50 on the same pairs"
        in text
    )
    assert "Mode: **full** (full fine-tune)" in text
    assert not any(d.value.columns.tolist() == ["features", "validation accuracy", "chosen"] for d in at.dataframe)
    assert " · LEARNED" not in at.selectbox(key="rw_run").options[0]


def test_old_files_without_intervals_get_them_computed():
    # Slices and reports written before `low`/`high`: the interval from accuracy and n.
    assert slice_interval({"n": 2, "accuracy": 0.5}) == "[0.09, 0.91]"
    assert slice_interval({"n": 2, "accuracy": 0.5, "low": 0.1, "high": 0.9}) == "[0.10, 0.90]"  # as stored
    assert slice_interval({"n": 0, "accuracy": None}) == "n/a"
    iv = report_interval({"pairs": 5, "accuracy": 0.6})
    assert (iv["n"], round(iv["low"], 4), round(iv["high"], 4)) == (5, 0.2307, 0.8824)
    # The verdict of a summary without `learning`; a stored one wins.
    assert learning({"eval_accuracy": 0.8, "test_pairs": 100, "eval_accuracy_before": 0.5})["status"] == "learned"
    assert learning({"eval_accuracy": 0.55, "test_pairs": 100})["status"] == "learned_nothing"
    assert learning({})["status"] == "too_small"
    stored = {"status": "learned_nothing", "message": "m"}
    assert learning({"eval_accuracy": 0.9, "test_pairs": 100, "learning": stored}) == stored


def test_misranked_pairs_worst_first_escaped_and_loadable(open_app, seeded, run):
    at = _reward_page(open_app, seeded)
    mis = next(d.value for d in at.dataframe if "gap" in d.value.columns)
    assert list(mis["comparison_id"]) == [13, 14] and list(mis["gap"]) == [1.5, 0.5]  # worst first
    pairs = [e.label for e in at.expander if e.label.startswith("#")]
    assert pairs == ["#1 · comparison 13 · gap 1.500", "#2 · comparison 14 · gap 0.500"]
    # User text goes through st.markdown without unsafe_allow_html: the script tag stays text.
    assert any(XSS_PROMPT in md.value for md in at.markdown)
    assert all(not getattr(md.proto, "allow_html", False) for md in at.markdown)
    at.button(key="rw_load_0").click().run()
    assert (at.text_area(key="rw_prompt").value, at.text_area(key="rw_resp_0").value) == (
        XSS_PROMPT,
        ROWS[2]["chosen"],
    )
    assert at.text_area(key="rw_resp_1").value == ROWS[2]["rejected"]


def test_try_it_scores_equal_score_sequences(open_app, seeded, run):
    at = _reward_page(open_app, seeded)
    at.number_input(key="rw_n").set_value(3).run()
    prompt, responses = "Tell me about the sky.", ["The sky is blue, thank you.", "No.", "It is here."]
    at.text_area(key="rw_prompt").input(prompt)
    for i, r in enumerate(responses):
        at.text_area(key=f"rw_resp_{i}").input(r)
    _button(at, "Score").click().run()
    assert not at.exception and _errors(at) == []
    shown = next(d.value for d in at.dataframe if "reward" in d.value.columns)

    model, tok = load_reward_model(run)
    chat = [{"role": "user", "content": prompt}]  # the tiny tokenizer has a chat template, as training used
    want = score_sequences(model, [encode_pair_side(tok, chat, r) for r in responses], tok.pad_token_id)
    assert list(shown["reward"]) == want
    assert list(shown["response"]) == ["Response 1", "Response 2", "Response 3"]
    # normalised = (reward - 0.25) / 1.5 with the run's training mean and std
    assert list(shown["normalised"]) == pytest.approx([(r - 0.25) / 1.5 for r in want])
    assert [m.value for m in at.metric if m.label.startswith("Response")] == [f"{r:+.3f}" for r in want]

    # Empty inputs are refused with one message, and the last scores stay.
    at.text_area(key="rw_resp_1").input("  ")
    _button(at, "Score").click().run()
    assert _errors(at) == ["Cannot score: Response 2 is empty."]
    assert list(at.session_state["rw_scored"]["scores"]["reward"]) == want


def test_prefix_trace_equals_score_prefixes(open_app, seeded, run):
    at = _reward_page(open_app, seeded)
    prompt, responses = "Say something.", ["good better best, thank you", "bad worse"]
    at.text_area(key="rw_prompt").input(prompt)
    for i, r in enumerate(responses):
        at.text_area(key=f"rw_resp_{i}").input(r)
    _button(at, "Score").click().run()
    trace_form = [s for s in at.selectbox if s.label == "Response"][0]
    trace_form.set_value(0)
    _button(at, "Trace").click().run()
    assert not at.exception and _errors(at) == []
    shown = next(d.value for d in at.dataframe if "text" in d.value.columns)

    model, tok = load_reward_model(run)
    want = score_prefixes(model, tok, [{"role": "user", "content": prompt}], responses[0], max_points=48)
    assert shown.to_dict("records") == want
    assert want[-1]["text"] == responses[0] and want[0]["tokens"] == 1  # short text: one point per token


def test_run_without_eval_report(open_app, seeded, run):
    (run / "eval_report.json").unlink()
    at = _reward_page(open_app, seeded)
    assert _errors(at) == []
    assert "no eval_report.json" in at.info[0].value
    assert _metrics(at)["Annotator agreement"][0] == "n/a"
    assert _metrics(at)["Held-out accuracy"][0] == "60.0%"  # summary.json still read


def test_corrupted_json_is_an_error_not_a_traceback(open_app, seeded, run, template, runs_root):
    (run / "eval_report.json").write_text('{"pairs": 5, "accuracy": ', encoding="utf-8")
    at = _reward_page(open_app, seeded)
    assert _errors(at) == [f"{run.name}: eval_report.json is not valid JSON (Expecting value at line 1, column 26)"]
    assert _metrics(at)["Held-out accuracy"][0] == "60.0%"

    # Valid JSON of the wrong shape: named, and the report left out rather than half drawn.
    (run / "eval_report.json").write_text('{"pairs": 5, "accuracy": 0.6, "by_strength": [1]}', encoding="utf-8")
    at = _reward_page(open_app, seeded)
    assert _errors(at)[0].startswith(f"{run.name}: eval_report.json: lacks by_category, by_agreement, ")
    assert "`by_strength` should map each slice to {n, accuracy}" in _errors(at)[0]
    assert "Expected calibration error" not in _metrics(at)

    # A newer run whose summary.json is broken: listed first, marked, and its error shown.
    broken = copy_run(template, runs_root, "20260102-000000-broken")
    (broken / "summary.json").write_text("[1, 2", encoding="utf-8")
    os.utime(broken / "summary.json", (2e9, 2e9))
    at = _reward_page(open_app, seeded)
    assert not at.exception
    box = at.selectbox(key="rw_run")
    assert box.value == str(broken) and "summary unreadable" in box.options[0]
    assert "summary.json is not valid JSON" in _errors(at)[0]
    assert _verdicts(at) == []  # no summary, no verdict


def test_list_reward_runs_newest_first_and_curves_skip_nan(template, tmp_path):
    root = tmp_path / "runs"
    older, newer = copy_run(template, root, "b-older"), copy_run(template, root, "a-newer")
    (root / "unfinished").mkdir()  # no summary.json: not listed
    os.utime(older / "summary.json", (1.7e9, 1.7e9))
    os.utime(newer / "summary.json", (1.8e9, 1.8e9))
    runs = list_reward_runs(root)
    assert [r.id for r in runs] == ["a-newer", "b-older"]
    # An old summary (no `learning`): the verdict from its 5 held-out pairs, too few to tell.
    assert (
        runs[0].label().startswith(f"a-newer · held-out accuracy {HELD_OUT_TEXT} · too few held-out pairs to tell · ")
    )
    assert list_reward_runs(tmp_path / "absent") == []
    from rlhf.runs import MetricsLog

    frame = curves_frame(MetricsLog(older).read(), ("eval_loss",))
    assert list(frame["step"]) == [10, 20] and list(frame["value"]) == pytest.approx([0.5, 0.4])  # NaN skipped
    assert slices_table({}).empty


def test_misranked_pairs_are_paginated(open_app, seeded, run):
    from rlhf.reward import build_eval_report
    from rlhf.runs import write_json

    # 12 misranked pairs with gaps 1..12: page 1 holds the 10 worst (gaps 12..3), page 2 the last two.
    rows = [{**ROWS[0], "comparison_id": 100 + g, "r_chosen": 0.0, "r_rejected": float(g)} for g in range(1, 13)]
    write_json(run / "eval_report.json", build_eval_report(rows))
    at = _reward_page(open_app, seeded)
    pairs = [e.label for e in at.expander if e.label.startswith("#")]
    assert len(pairs) == 10 and pairs[0] == "#1 · comparison 112 · gap 12.000"
    at.number_input(key=f"rw_page_{run.name}").set_value(2).run()
    pairs = [e.label for e in at.expander if e.label.startswith("#")]
    assert pairs == ["#11 · comparison 102 · gap 2.000", "#12 · comparison 101 · gap 1.000"]


def test_a_broken_model_is_an_error_not_a_traceback(open_app, seeded, run):
    (run / "model" / "model.safetensors").write_bytes(b"not a safetensors file")
    at = _reward_page(open_app, seeded)
    at.text_area(key="rw_prompt").input("Hi")
    at.text_area(key="rw_resp_0").input("Hello")
    at.text_area(key="rw_resp_1").input("Go away")
    _button(at, "Score").click().run()
    assert not at.exception
    assert len(_errors(at)) == 1
    assert _errors(at)[0].startswith(f"Cannot score with the model in {run.name}/model: ")
    assert at.session_state["rw_scored"] is None
