"""Candidate generation: settings are validated and recorded, greedy is deterministic, seeds reproduce."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from rlhf import generate as gen
from rlhf.errors import ValidationError
from rlhf.generate import Generated, GenerationSettings, generate_candidates, generate_responses, with_system
from rlhf.models import load_causal_lm
from rlhf.schema import Comparison, Completion
from rlhf.store import PromptRecord

PROMPTS = ["Explain why the sky is blue.", "Write a haiku about rain.", [{"role": "user", "content": "Say hello."}]]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_causal_lm(tiny_model_dir)


def test_settings_report_every_problem_at_once():
    with pytest.raises(ValidationError) as e:
        GenerationSettings(temperature=0, top_k=-1, top_p=1.5, max_new_tokens=0, batch_size=0).validate()
    assert len(e.value.problems) == 5
    with pytest.raises(ValidationError, match="greedy decoding"):
        GenerationSettings(do_sample=False, num_candidates=2).validate()


def test_recorded_settings_drop_sampling_knobs_for_greedy():
    assert GenerationSettings(do_sample=False, num_candidates=1, max_new_tokens=5, seed=3).recorded() == {
        "do_sample": False,
        "max_new_tokens": 5,
        "num_candidates": 1,
        "seed": 3,
    }
    assert GenerationSettings().recorded() == {
        "do_sample": True,
        "temperature": 0.8,
        "top_k": 50,
        "top_p": 0.95,
        "max_new_tokens": 128,
        "num_candidates": 2,
        "seed": 0,
    }


def test_greedy_is_deterministic(tiny):
    model, tok = tiny
    s = GenerationSettings(do_sample=False, num_candidates=1, max_new_tokens=12)
    assert generate_responses(model, tok, PROMPTS, s, seed=0) == generate_responses(model, tok, PROMPTS, s, seed=99)


def test_seed_reproduces_samples_and_another_seed_differs(tiny):
    model, tok = tiny
    s = GenerationSettings(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=16, num_candidates=2)
    a = generate_responses(model, tok, PROMPTS, s, seed=7)
    assert a == generate_responses(model, tok, PROMPTS, s, seed=7)
    assert a != generate_responses(model, tok, PROMPTS, s, seed=8)


def test_responses_respect_max_new_tokens(tiny):
    model, tok = tiny
    out = generate_responses(model, tok, PROMPTS, GenerationSettings(max_new_tokens=5, num_candidates=3), seed=0)
    assert [len(r) for r in out] == [3, 3, 3]
    for r in out:
        for g in r:
            assert 1 <= g.num_tokens <= 5 and g.finish_reason in ("eos", "length")
            assert g.finish_reason == "eos" or g.num_tokens == 5


def test_generate_candidates_stores_settings_seed_and_pairs_and_resumes(store, tiny_model_dir):
    store.add_prompts([PromptRecord(p) for p in PROMPTS])
    s = GenerationSettings(max_new_tokens=8, num_candidates=3, seed=5, batch_size=2)
    r = generate_candidates(store, str(tiny_model_dir), s, limit=2)
    assert (r.prompts, r.completions) == (2, 6)
    assert r.comparisons + r.identical_pairs_skipped == 2 * 3  # K=3 -> 3 pairs per prompt
    with store.session() as sess:
        comps = sess.scalars(select(Completion)).all()
        assert {c.model for c in comps} == {str(tiny_model_dir)}
        assert all(c.settings == s.recorded() for c in comps)
        # Each batch's seed is seed * 1_000_003 + the id of the batch's first prompt.
        assert {c.seed - 5 * 1_000_003 for c in comps} <= {c.prompt_id for c in comps}
    # Resume: only the prompt left over is generated; a third run has nothing to do.
    r2 = generate_candidates(store, str(tiny_model_dir), s)
    assert r2.prompts == 1
    assert generate_candidates(store, str(tiny_model_dir), s).prompts == 0
    assert store.counts()["completions"] == 9


def test_identical_responses_are_not_stored_as_a_pair(store, tiny_model_dir, monkeypatch):
    store.add_prompts([PromptRecord("p")])

    def same(model, tok, prompts, settings, seed):
        return [[Generated("same answer", 2, "eos"), Generated("same answer ", 2, "eos")] for _ in prompts]

    monkeypatch.setattr(gen, "generate_responses", same)
    r = generate_candidates(store, str(tiny_model_dir), GenerationSettings(max_new_tokens=4))
    assert (r.completions, r.comparisons, r.identical_pairs_skipped) == (2, 0, 1)
    with store.session() as sess:
        assert sess.scalars(select(Comparison)).all() == []


def test_progress_is_reported_per_batch(store, tiny_model_dir):
    store.add_prompts([PromptRecord(f"prompt number {i}") for i in range(5)])
    seen = []
    generate_candidates(
        store,
        str(tiny_model_dir),
        GenerationSettings(max_new_tokens=2, batch_size=2),
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]


def test_with_system_adds_or_prepends_a_system_message():
    assert with_system("Hi", "") == "Hi"
    assert with_system("Hi", "Use a list.") == [
        {"role": "system", "content": "Use a list."},
        {"role": "user", "content": "Hi"},
    ]
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    assert with_system(chat, "Use a list.") == [
        {"role": "system", "content": "Use a list.\n\nBe kind."},
        {"role": "user", "content": "Hi"},
    ]
    assert chat[0]["content"] == "Be kind."  # the caller's prompt is not changed


def test_each_candidate_is_generated_under_its_system_prompt(tiny):
    model, tok = tiny
    systems = ["", "Answer as a list.", "Speak to the reader."]
    s = GenerationSettings(do_sample=False, num_candidates=3, max_new_tokens=10, system_prompts=systems)
    out = generate_responses(model, tok, PROMPTS, s, seed=0)
    one = GenerationSettings(do_sample=False, num_candidates=1, max_new_tokens=10)
    for prompt, row in zip(PROMPTS, out):
        # Candidate k is exactly the greedy answer to the prompt under system prompt k.
        alone = [generate_responses(model, tok, [with_system(prompt, x)], one, seed=0)[0][0] for x in systems]
        assert [g.text for g in row] == [g.text for g in alone]
        assert [g.system_prompt for g in row] == systems
    # Candidates beyond the list wrap around: K=4 with 3 system prompts -> 0, 1, 2, 0.
    s4 = GenerationSettings(num_candidates=4, max_new_tokens=4, system_prompts=systems)
    assert [g.system_prompt for g in generate_responses(model, tok, PROMPTS[:1], s4, seed=0)[0]] == [*systems, ""]
    with pytest.raises(ValidationError, match="give K different `system_prompts`"):
        GenerationSettings(do_sample=False, num_candidates=3, system_prompts=["a", "b", "a"]).validate()
    with pytest.raises(ValidationError, match="`system_prompts` must be a list of strings"):
        GenerationSettings(system_prompts=["a", 3]).validate()


def test_a_candidates_system_prompt_is_recorded_but_not_stored_in_its_prompt(store, tiny_model_dir):
    store.add_prompts([PromptRecord("Name a fruit.")])
    s = GenerationSettings(max_new_tokens=6, num_candidates=2, system_prompts=["", "Answer in French."])
    generate_candidates(store, str(tiny_model_dir), s)
    with store.session() as sess:
        comps = sorted(sess.scalars(select(Completion)).all(), key=lambda c: c.id)
        assert [c.settings.get("system_prompt") for c in comps] == ["", "Answer in French."]
        assert all({k: v for k, v in c.settings.items() if k != "system_prompt"} == s.recorded() for c in comps)
        assert "system_prompts" not in s.recorded()
        assert {c.prompt.content for c in comps} == {"Name a fruit."}
