"""Human evaluation of a PPO run (rlhf/human_eval.py): queued from a hand-made run folder, blind
sides at random but reproducible, idempotent, identical pairs skipped, labels -> the tuned policy's
win rate by people with a hand-computed Wilson interval, and never exported as training data."""

from __future__ import annotations

from pathlib import Path

import pytest
from ppo_run import write_fake_ppo_run
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from rlhf.errors import WorkbenchError
from rlhf.human_eval import (
    evaluation_source,
    human_evaluation_results,
    policy_side,
    queue_human_evaluation,
)
from rlhf.io import ExportOptions, export_preferences
from rlhf.ppo import build_ppo_report
from rlhf.runs import write_json
from rlhf.schema import Comparison, Prompt
from rlhf.store import CompletionRecord, PromptRecord, Store

RUN_ID = "20260105-120000-heval"
# (prompt, reference's response, tuned policy's response); the last pair's two responses are identical.
PAIRS = [(f"Question {i}?", f"Reference answer {i}.", f"Tuned answer {i}, longer.") for i in range(8)]
PAIRS.append(("Same?", "Same answer.", "Same answer. "))  # identical once stripped


@pytest.fixture
def store(backend_store):
    """Every test here runs on SQLite and on PostgreSQL (see conftest.backend_store)."""
    return backend_store


def make_run(root: Path, pairs=PAIRS, run_id: str = RUN_ID) -> Path:
    """A finished PPO run folder (tests/ppo_run.py) whose report.json holds `pairs`, built by the real
    `build_ppo_report` from evaluation rows."""
    run = write_fake_ppo_run(root / "runs" / "ppo" / run_id)

    def rows(which: int) -> list[dict]:
        return [
            {"prompt_index": i, "prompt": p[0], "response": p[which], "reward": 0.1 * which, "kl": 0.0,
             "kl_sum": 0.0, "length": 3 + which}
            for i, p in enumerate(pairs)
        ]  # fmt: skip

    write_json(run / "report.json", build_ppo_report(rows(1), rows(2), 6))
    return run


def evaluation_comparisons(store: Store, run_id: str = RUN_ID) -> list[Comparison]:
    with store.session() as s:
        q = (
            select(Comparison)
            .options(
                joinedload(Comparison.prompt), joinedload(Comparison.completion_a), joinedload(Comparison.completion_b)
            )
            .where(Comparison.source == evaluation_source(run_id))
            .order_by(Comparison.id)
        )
        return list(s.scalars(q).unique())


def sides(store: Store, run_id: str = RUN_ID) -> dict[str, str]:
    """prompt -> the stored letter of the tuned policy's completion."""
    return {
        c.prompt.text: "A" if c.completion_a.model == f"ppo:{run_id}" else "B"
        for c in evaluation_comparisons(store, run_id)
    }


def test_queue_stores_both_responses_and_one_comparison_per_prompt(store, tmp_path):
    run = make_run(tmp_path)
    store.add_prompts([PromptRecord("Question 0?", category="math")])  # already in the store: reused
    counts = queue_human_evaluation(store, run, required_labels=2)
    assert counts == {
        "run_id": RUN_ID,
        "source": f"evaluation:{RUN_ID}",
        "required_labels": 2,
        "pairs": 9,
        "considered": 9,
        "identical_skipped": 1,
        "queued": 8,
        "already_queued": 0,
        "prompts_added": 7,
    }
    comps = evaluation_comparisons(store)
    assert [c.prompt.text for c in comps] == [p[0] for p in PAIRS[:8]]
    for c, (_, ref_text, pol_text) in zip(comps, PAIRS, strict=False):
        assert c.required_labels == 2 and c.status == "pending" and c.round == 0
        by_model = {x.model: x for x in (c.completion_a, c.completion_b)}
        # config.json's policy_path is "models/tiny": the reference is named by its folder.
        assert set(by_model) == {"reference:tiny", f"ppo:{RUN_ID}"}
        ref, pol = by_model["reference:tiny"], by_model[f"ppo:{RUN_ID}"]
        assert (ref.text, pol.text) == (ref_text, pol_text)
        assert (ref.finish_reason, pol.finish_reason, ref.num_tokens, pol.num_tokens) == (None, None, 4, 5)
        assert ref.settings == {"run": RUN_ID, "step": 6, "from": "report.json"}
    with store.session() as s:
        prompts = {p.text: p for p in s.scalars(select(Prompt))}
    assert prompts["Question 0?"].category == "math" and prompts["Question 0?"].split is None  # untouched
    assert prompts["Question 1?"].split == "test" and prompts["Question 1?"].source == f"evaluation:{RUN_ID}"
    assert "Same?" not in prompts  # its pair was skipped, so its prompt was not added


def test_sides_are_random_but_reproducible(store, tmp_path):
    run = make_run(tmp_path)
    queue_human_evaluation(store, run, limit=3)  # a partial queue first: sides do not depend on it
    queue_human_evaluation(store, run)
    got = sides(store)
    assert got == {p[0]: policy_side(p[0], RUN_ID, 0) for p in PAIRS[:8]}
    assert set(got.values()) == {"A", "B"}  # both sides occur
    # The same run and seed into another store: the same sides; another seed: other sides.
    for seed, same in ((0, True), (1, False)):
        other = Store(f"sqlite:///{tmp_path / f'other-{seed}.db'}")
        other.init()
        queue_human_evaluation(other, run, seed=seed)
        assert (sides(other) == got) is same
        other.engine.dispose()


def test_queueing_twice_adds_nothing(store, tmp_path):
    run = make_run(tmp_path)
    first = queue_human_evaluation(store, run, limit=3)
    assert (first["considered"], first["queued"], first["already_queued"]) == (3, 3, 0)
    rest = queue_human_evaluation(store, run)
    assert (rest["queued"], rest["already_queued"], rest["identical_skipped"], rest["prompts_added"]) == (5, 3, 1, 5)
    before = store.counts()
    again = queue_human_evaluation(store, run, required_labels=3)
    assert (again["queued"], again["already_queued"], again["prompts_added"]) == (0, 8, 0)
    assert store.counts() == before
    assert {c.required_labels for c in evaluation_comparisons(store)} == {1}


def test_a_run_without_pairs_is_refused(store, tmp_path):
    run = write_fake_ppo_run(tmp_path / "runs" / "ppo" / "unfinished", finished=False)
    with pytest.raises(WorkbenchError, match="report.json does not exist"):
        queue_human_evaluation(store, run)
    only_identical = make_run(tmp_path, pairs=[PAIRS[-1]], run_id="identical")
    counts = queue_human_evaluation(store, only_identical)
    assert (counts["identical_skipped"], counts["queued"]) == (1, 0)
    with pytest.raises(WorkbenchError, match="required_labels"):
        queue_human_evaluation(store, only_identical, required_labels=0)


def label_as(store: Store, annotator_id: int, comparison: Comparison, outcome: str) -> int:
    """Label one evaluation comparison as a win / loss for the tuned policy, or tie / both_bad."""
    pol = "A" if comparison.completion_a.model.startswith("ppo:") else "B"
    choice = {"win": pol, "loss": "B" if pol == "A" else "A"}.get(outcome, outcome)
    strength = 2 if choice in ("A", "B") else None
    return store.save_label(comparison.id, annotator_id, choice, strength, shown_left="A").id


def test_win_rate_by_people_with_ties_half_and_a_hand_computed_interval(store, tmp_path):
    queue_human_evaluation(store, make_run(tmp_path), limit=6)
    comps = evaluation_comparisons(store)
    assert {c.completion_a.model for c in comps[:5]} == {"reference:tiny", f"ppo:{RUN_ID}"}  # mixed sides
    ann, _ = store.add_annotator("ann")
    bob, _ = store.add_annotator("bob")
    for c, outcome in zip(comps[:5], ("win", "win", "win", "tie", "loss"), strict=True):
        label_as(store, ann.id, c, outcome)
    # bob: one label undone (discarded), and a skip (no label at all): neither counts.
    store.discard_label(label_as(store, bob.id, comps[5], "loss"), bob.id)
    assert store.next_comparison(bob.id).id == comps[5].id
    assert store.next_comparison(bob.id, exclude=[comps[5].id]) is None  # skipped: nothing written

    r = human_evaluation_results(store, RUN_ID)
    # 3 wins + 1 tie (half) of 5 -> 3.5 / 5 = 0.70. Wilson 95%, z = 1.959964, z^2 = 3.841459:
    # centre = (0.7 + 3.841459 / 10) / (1 + 3.841459 / 5) = 1.0841459 / 1.7682918 = 0.6131035;
    # half = 1.959964 / 1.7682918 * sqrt(0.7 * 0.3 / 5 + 3.841459 / 100) = 1.1083939 * sqrt(0.0804146)
    #      = 1.1083939 * 0.2835747 = 0.3143126 -> [0.2988, 0.9274].
    wr = r["win_rate"]
    assert (wr["value"], wr["n"], wr["wins"], wr["ties"], wr["losses"]) == (pytest.approx(0.70), 5, 3, 1, 1)
    assert wr["low"] == pytest.approx(0.2988, abs=5e-5) and wr["high"] == pytest.approx(0.9274, abs=5e-5)
    assert r["by_annotator"] == {"ann": wr}  # bob's undone label and skip do not count
    assert (r["labels"], r["both_bad"], r["comparisons"], r["pending"], r["completed"]) == (5, 0, 6, 1, 5)
    assert r["ties_count_half"] is True and "count half" in r["note"]

    # "both bad" counts half too, per annotator: bob 0.5 of 1; everyone 4.0 / 6.
    label_as(store, bob.id, comps[5], "both_bad")
    r = human_evaluation_results(store, RUN_ID)
    assert r["by_annotator"]["bob"]["value"] == 0.5 and r["by_annotator"]["bob"]["ties"] == 1
    assert (r["win_rate"]["value"], r["win_rate"]["n"], r["both_bad"], r["pending"]) == (pytest.approx(4 / 6), 6, 1, 0)
    assert human_evaluation_results(store, "another-run")["win_rate"]["value"] is None  # nothing queued


def test_evaluation_comparisons_are_never_exported(store, tmp_path):
    store.add_prompts([PromptRecord("Train me?")])
    with store.session() as s:
        pid = s.scalar(select(Prompt.id).where(Prompt.text == "Train me?"))
    store.add_candidates(pid, [CompletionRecord("Yes.", "m"), CompletionRecord("No.", "m")])
    queue_human_evaluation(store, make_run(tmp_path), limit=2)
    ann, _ = store.add_annotator("ann")
    with store.session() as s:
        normal = s.scalar(select(Comparison.id).where(Comparison.source == "generated"))
    store.save_label(normal, ann.id, "A", 2)
    for c in evaluation_comparisons(store):
        label_as(store, ann.id, c, "win")
    res = export_preferences(store, tmp_path / "export", ExportOptions(test_fraction=0))
    assert res.counts["comparisons_considered"] == 1 and res.counts["exported_train"] == 1
    assert res.manifest["excluded_evaluation_comparisons"] == 2
    from datasets import load_from_disk

    assert load_from_disk(str(tmp_path / "export"))["train"]["comparison_id"] == [normal]
    # Agreement statistics do see them: they are real labels.
    assert len(store.label_rows()) == 3


def test_only_evaluation_labels_give_nothing_to_export(store, tmp_path):
    queue_human_evaluation(store, make_run(tmp_path), limit=1)
    ann, _ = store.add_annotator("ann")
    label_as(store, ann.id, evaluation_comparisons(store)[0], "win")
    with pytest.raises(WorkbenchError, match="nothing to export: 0 of 0 comparisons"):
        export_preferences(store, tmp_path / "export", ExportOptions(test_fraction=0))


def test_cli_queue_and_results(home, capsys):
    from rlhf.cli import main

    store = Store()
    store.init()
    make_run(home)
    assert main(["human-eval", "queue", RUN_ID, "--limit", "5", "--labels", "1"]) == 0
    out = capsys.readouterr().out
    assert "queued 5 comparisons (1 label(s) each) from 5 of 9 held-out prompts" in out
    ann, _ = store.add_annotator("ann")
    for c, outcome in zip(evaluation_comparisons(store), ("win", "win", "win", "tie", "loss"), strict=True):
        label_as(store, ann.id, c, outcome)
    assert main(["human-eval", "results", str(home / "runs" / "ppo" / RUN_ID)]) == 0
    out = capsys.readouterr().out
    assert "win rate of the tuned policy by people 0.70 [0.30, 0.93] (n=5), W/T/L 3/1/1" in out
    assert "ties count half" in out and "waiting for labels: 0" in out and "ann" in out
    assert main(["human-eval", "results", "no-such-run"]) == 2
    assert "no ppo run 'no-such-run'" in capsys.readouterr().err
