"""rlhf.io: prompt and preference import (formats, validation, all-or-nothing) and TRL export."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from rlhf.errors import ValidationError, WorkbenchError
from rlhf.io import (
    ExportOptions,
    export_preferences,
    import_preferences,
    import_prompts,
    read_preferences,
    read_prompts,
    rows_sha256,
)
from rlhf.schema import Annotator, Comparison, Completion, Label, Prompt
from rlhf.store import CompletionRecord, PromptRecord, content_hash


@pytest.fixture
def store(backend_store):
    """Every test here runs on SQLite and on PostgreSQL (see conftest.backend_store)."""
    return backend_store


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def _jsonl(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    return _write(tmp_path, name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _msgs(*pairs: str) -> list[dict[str, str]]:
    """_msgs("user", "hi", "assistant", "hello") -> chat messages."""
    return [{"role": r, "content": c} for r, c in zip(pairs[::2], pairs[1::2], strict=True)]


def _prompts(store) -> list[Prompt]:
    with store.session() as s:
        return list(s.scalars(select(Prompt).order_by(Prompt.id)))


# ------------------------------------------------------------------------------------------
# prompts: good inputs
# ------------------------------------------------------------------------------------------


def test_read_prompts_jsonl_plain_chat_tags_split_unicode(tmp_path: Path) -> None:
    chat = _msgs("system", "Be brief.", "user", "  Größe von 日本?  ")
    path = _write(
        tmp_path,
        "prompts.jsonl",
        json.dumps({"prompt": "  Explain why the sky is blue.\n", "id": 7, "tags": ["science", " ", "sky "]})
        + "\n\n"  # a blank line is skipped
        + json.dumps({"prompt": chat, "category": "geo", "split": "test", "source": "mine"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"messages": _msgs("user", "Write a haiku"), "id": "h-1"})
        + "\n",
    )
    recs = read_prompts(path)
    assert recs == [
        # outer whitespace stripped; int id -> "7"; blank tag dropped, tags stripped; source = file name
        PromptRecord("Explain why the sky is blue.", "7", "prompts.jsonl", None, ["science", "sky"], None),
        PromptRecord(_msgs("system", "Be brief.", "user", "Größe von 日本?"), None, "mine", "geo", [], "test"),
        PromptRecord(_msgs("user", "Write a haiku"), "h-1", "prompts.jsonl", None, [], None),
    ]
    assert read_prompts(path, source="batch-2")[0].source == "batch-2"  # a row's own source still wins
    assert read_prompts(path, source="batch-2")[1].source == "mine"


def test_read_prompts_json_list(tmp_path: Path) -> None:
    path = _write(tmp_path, "p.json", json.dumps([{"prompt": "a"}, {"messages": _msgs("user", "b")}], indent=2))
    assert [r.content for r in read_prompts(path)] == ["a", _msgs("user", "b")]


def test_read_prompts_csv(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "p.csv",
        "prompt,id,category,tags,split\n"
        '"Summarise:\n""quoted"", two lines",p1,summ,a;b,train\n'
        '"Ünïcode ok",,,"[""x"", ""y""]",\n'
        "\n"
        "Third,3,,,\n",
    )
    recs = read_prompts(path)
    assert recs == [
        PromptRecord('Summarise:\n"quoted", two lines', "p1", "p.csv", "summ", ["a", "b"], "train"),
        PromptRecord("Ünïcode ok", None, "p.csv", None, ["x", "y"], None),  # empty cells = not given
        PromptRecord("Third", "3", "p.csv", None, [], None),
    ]
    chat = _write(tmp_path, "chat.csv", 'messages\n"[{""role"": ""user"", ""content"": ""hi""}]"\n')
    assert read_prompts(chat)[0].content == _msgs("user", "hi")


def test_read_prompts_datasets_dir(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict(
        {
            "train": Dataset.from_list([{"prompt": "tr-1", "split": None}, {"prompt": "tr-2", "split": "test"}]),
            "test": Dataset.from_list([{"prompt": "te-1", "split": None}]),
            "validation": Dataset.from_list([{"prompt": "va-1", "split": None}]),
        }
    ).save_to_disk(str(tmp_path / "dd"))
    recs = read_prompts(tmp_path / "dd")
    # split name sets `split` for train/test, unless the row has its own; other split names set none
    assert [(r.content, r.split) for r in recs] == [
        ("tr-1", "train"),
        ("tr-2", "test"),
        ("te-1", "test"),
        ("va-1", None),
    ]
    Dataset.from_list([{"messages": _msgs("user", "q")}]).save_to_disk(str(tmp_path / "ds"))
    assert [r.content for r in read_prompts(tmp_path / "ds")] == [_msgs("user", "q")]


def test_import_prompts_dry_run_then_import_then_reimport(store, tmp_path: Path) -> None:
    path = _jsonl(tmp_path, "p.jsonl", [{"prompt": "a", "tags": ["t"]}, {"messages": _msgs("user", "b")}])
    before = store.counts()
    r = import_prompts(store, path, dry_run=True)
    assert (r.read, r.added, r.already_present, r.dry_run) == (2, 2, 0, True)
    assert store.counts() == before
    r = import_prompts(store, path)
    assert (r.read, r.added, r.already_present, r.dry_run) == (2, 2, 0, False)
    rows = _prompts(store)
    assert [(p.text, p.messages, p.tags, p.source) for p in rows] == [
        ("a", None, ["t"], "p.jsonl"),
        (None, _msgs("user", "b"), [], "p.jsonl"),
    ]
    assert rows[0].content_hash == content_hash("a")
    more = _jsonl(tmp_path, "more.jsonl", [{"prompt": "a"}, {"prompt": "c"}])
    r = import_prompts(store, more)
    assert (r.read, r.added, r.already_present) == (2, 1, 1)  # "a" is already stored
    assert import_prompts(store, more, dry_run=True).already_present == 2
    assert store.counts()["prompts"] == 3


# ------------------------------------------------------------------------------------------
# prompts: bad inputs, each named by file, line and field; nothing stored
# ------------------------------------------------------------------------------------------

BAD_PROMPTS = [
    ("b.jsonl", '{"id": 1}\n', "b.jsonl line 1: field 'prompt' is missing"),
    (
        "b.jsonl",
        '{"prompt": 3}\n',
        "b.jsonl line 1: field 'prompt' must be text or a list of chat messages, got a number",
    ),
    ("b.jsonl", '{"prompt": "ok"}\n{"prompt": " \\n "}\n', "b.jsonl line 2: field 'prompt' is empty"),
    ("b.jsonl", '{"prompt": "ok"}\n{"prompt": "x",\n', "b.jsonl line 2: malformed JSON"),
    ("b.jsonl", '{"prompt": "ok"}\n[1, 2]\n', "b.jsonl line 2: expected a JSON object, got a list"),
    (
        "b.jsonl",
        '{"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]}\n',
        "b.jsonl line 1: field 'messages' message 2: role 'bot' is not one of system, user, assistant",
    ),
    (
        "b.jsonl",
        '{"prompt": [{"role": "user", "content": 5}]}\n',
        "b.jsonl line 1: field 'prompt' message 1: content must be text, got a number",
    ),
    (
        "b.jsonl",
        '{"prompt": [{"role": "user", "content": " "}]}\n',
        "b.jsonl line 1: field 'prompt' message 1: content is empty",
    ),
    ("b.jsonl", '{"messages": []}\n', "b.jsonl line 1: field 'messages' is empty (no messages)"),
    (
        "b.jsonl",
        '{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": " a "}\n',
        "b.jsonl line 3: duplicate prompt, the same as b.jsonl line 1",
    ),
    (
        "b.jsonl",
        '{"prompt": "a", "split": "dev"}\n',
        "b.jsonl line 1: field 'split' must be one of train, test, got 'dev'",
    ),
    (
        "b.jsonl",
        '{"prompt": "a", "messages": []}\n',
        "b.jsonl line 1: give field 'prompt' or field 'messages', not both",
    ),
    (
        "b.jsonl",
        '{"prompt": "a", "tags": "x"}\n',
        "b.jsonl line 1: field 'tags' must be a list of text, got text",
    ),
    (
        "b.jsonl",
        '{"prompt": "a", "category": 1}\n',
        "b.jsonl line 1: field 'category' must be text, got a number",
    ),
    (
        "b.jsonl",
        b'{"prompt": "a"}\n{"prompt": "\xff"}\n',
        "b.jsonl line 2: not valid UTF-8 (byte 0xff at column 13)",
    ),
    ("b.jsonl", "", "b.jsonl: holds no prompts"),
    (
        "b.json",
        '[\n  {"prompt": "a"},\n  {"prompt": 1}\n]',
        "b.json line 3 (item 2): field 'prompt' must be text",
    ),
    (
        "b.json",
        '[\n  {"prompt": "a"}\n  {"prompt": "b"}\n]',
        "b.json line 3: malformed JSON (expected ',' or ']' after item 1)",
    ),
    ("b.csv", "text,id\nhello,1\n", "b.csv line 1: no 'prompt' or 'messages' column (columns: text, id)"),
    ("b.csv", "prompt,id\nhello,1\nbye\n", "b.csv line 3: 1 fields, but the header has 2"),
    ("b.csv", "prompt,tags\nhello,\n,x\n", "b.csv line 3: field 'prompt' is empty"),
    ("b.csv", "prompt,messages\n,not json\n", "b.csv line 2: field 'messages' is not valid JSON"),
    ("b.csv", b"prompt\nok\n\xc3(\n", "b.csv line 3: not valid UTF-8 (byte 0xc3 at column 1)"),
    ("b.csv", "prompt\n", "b.csv: holds no prompts (only a header row)"),
]


@pytest.mark.parametrize("name,content,expected", BAD_PROMPTS)
def test_bad_prompts_are_named_and_store_unchanged(store, tmp_path, name, content, expected) -> None:
    path = _write(tmp_path, name, content)
    before = store.counts()
    with pytest.raises(ValidationError) as e:
        import_prompts(store, path)
    assert any(p.startswith(expected) for p in e.value.problems), e.value.problems
    assert "nothing was changed" in str(e.value)
    assert store.counts() == before


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("b.jsonl", b"\x00\x01garbage\xff\x00", "looks like a binary file, not JSON text"),
        ("b.csv", b"PK\x03\x04\x00\x00", "looks like a binary file, not CSV text"),
        ("b.txt", "prompt", "unsupported file type '.txt'; supported: .jsonl, .json, .csv, or a folder"),
        ("missing.jsonl", None, "does not exist"),
        ("folder", "dir", "is a folder but not one written by datasets' save_to_disk"),
    ],
)
def test_files_that_are_not_what_they_claim(store, tmp_path, name, content, expected) -> None:
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
        (path / "x.txt").write_text("hi")
    elif content is not None:
        _write(tmp_path, name, content)
    before = store.counts()
    with pytest.raises(WorkbenchError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        import_prompts(store, path)
    assert store.counts() == before


def test_all_problems_reported_at_once_in_file_order_and_nothing_written(store, tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "p.jsonl",
        '{"prompt": "good one"}\n{"prompt": 5}\n{"prompt": "good two"}\nnope\n{"prompt": "x", "split": "val"}\n',
    )
    with pytest.raises(ValidationError) as e:
        import_prompts(store, path)
    assert [p.split(":")[0] for p in e.value.problems] == [
        "p.jsonl line 2",
        "p.jsonl line 4",
        "p.jsonl line 5",
    ]
    assert str(e.value).startswith(f"prompts file {path}: 3 problem(s), nothing was changed")
    assert store.counts()["prompts"] == 0  # the two good lines were not written either


# ------------------------------------------------------------------------------------------
# preferences: import
# ------------------------------------------------------------------------------------------


def _stored_pairs(store) -> list[tuple]:
    """(prompt content, chosen text, rejected text, label choice, strength, annotator) per comparison."""
    with store.session() as s:
        out = []
        for c in s.scalars(select(Comparison).order_by(Comparison.id)):
            (label,) = c.labels
            out.append(
                (
                    c.prompt.content,
                    c.completion_a.text,
                    c.completion_b.text,
                    label.choice,
                    label.strength,
                    label.annotator.name,
                )
            )
        return out


def test_import_trl_text_with_margins(store, tmp_path: Path) -> None:
    rows = [
        {"prompt": "Q1", "chosen": " good ", "rejected": "bad", "margin": 0},
        {"prompt": "Q1", "chosen": "good", "rejected": "worse", "margin": 0.5},
        {"prompt": "Q2", "chosen": "yes", "rejected": "no", "margin": 1.4, "category": "c", "tags": ["t"]},
        {"prompt": "Q3", "chosen": "yes", "rejected": "no", "margin": 2.5, "id": "x3"},
        {"prompt": "Q4", "chosen": "yes", "rejected": "no", "margin": 7},
        {"prompt": "Q5", "chosen": "yes", "rejected": "no"},
    ]
    path = _jsonl(tmp_path, "prefs.jsonl", rows)
    r = import_preferences(store, path)
    assert (r.read, r.added, r.already_present, r.dry_run) == (6, 6, 0, False)
    # margin -> strength: round half up, cap 3: 0->0, 0.5->1, 1.4->1, 2.5->3, 7->3, none->None
    assert _stored_pairs(store) == [
        ("Q1", "good", "bad", "A", 0, "imported"),
        ("Q1", "good", "worse", "A", 1, "imported"),
        ("Q2", "yes", "no", "A", 1, "imported"),
        ("Q3", "yes", "no", "A", 3, "imported"),
        ("Q4", "yes", "no", "A", 3, "imported"),
        ("Q5", "yes", "no", "A", None, "imported"),
    ]
    c = store.counts()
    # 5 distinct prompts; Q1's "good" is stored once (2 + 1 for Q1, 2 each for Q2-Q5 = 11)
    assert (c["prompts"], c["completions"], c["comparisons_completed"], c["labels_submitted"]) == (
        5,
        11,
        6,
        6,
    )
    assert c["annotators"] == 0  # the system annotator is inactive and cannot log in
    with store.session() as s:
        comp = s.scalars(select(Comparison)).first()
        assert (comp.status, comp.required_labels, comp.source) == ("completed", 1, "imported:prefs.jsonl")
        assert {x.model for x in s.scalars(select(Completion))} == {"imported:prefs.jsonl"}
        assert {x.settings == {} for x in s.scalars(select(Completion))} == {True}
        q2 = s.scalar(select(Prompt).where(Prompt.text == "Q2"))
        assert (q2.category, q2.tags, q2.source) == ("c", ["t"], "prefs.jsonl")
        a = s.scalar(select(Annotator).where(Annotator.name == "imported"))
        assert (a.active, a.token_hash) == (False, None)


def test_import_trl_conversational(tmp_path: Path) -> None:
    prompt = _msgs("system", "Be kind.", "user", "Hi?")
    path = _jsonl(
        tmp_path,
        "conv.jsonl",
        [
            # normal: chosen/rejected are the assistant message(s)
            {
                "prompt": prompt,
                "chosen": _msgs("assistant", "Hello!"),
                "rejected": _msgs("assistant", "Go away."),
            },
            # full conversation including the prompt: the shared prefix is cut; two assistant messages join
            {
                "prompt": _msgs("user", "Count"),
                "chosen": _msgs("user", "Count", "assistant", "1", "assistant", "2"),
                "rejected": _msgs("user", "Count", "assistant", "3"),
            },
        ],
    )
    recs = read_preferences(path)
    assert [(r.prompt.content, r.chosen, r.rejected, r.strength) for r in recs] == [
        (prompt, "Hello!", "Go away.", None),
        (_msgs("user", "Count"), "1\n\n2", "3", None),
    ]


HH_SINGLE = {
    "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4, of course.",
    "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5",
}
HH_TURNS = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:"
HH_MULTI = {"chosen": HH_TURNS + " A chicken crossed the road.", "rejected": HH_TURNS + "  No. "}


def test_import_hh_single_and_multi_turn(store, tmp_path: Path) -> None:
    path = _jsonl(tmp_path, "hh.jsonl", [HH_SINGLE, HH_MULTI])
    recs = read_preferences(path)
    # single turn -> plain text prompt; the prompt ends at the last shared "\n\nAssistant:"
    assert (recs[0].prompt.content, recs[0].chosen, recs[0].rejected) == (
        "What is 2+2?",
        "4, of course.",
        "5",
    )
    # multi turn -> chat messages without the final empty Assistant turn; replies stripped
    assert (recs[1].prompt.content, recs[1].chosen, recs[1].rejected) == (
        _msgs("user", "Hi", "assistant", "Hello!", "user", "Tell me a joke"),
        "A chicken crossed the road.",
        "No.",
    )
    assert import_preferences(store, path, annotator_name="hh-import").added == 2
    assert [p[-1] for p in _stored_pairs(store)] == ["hh-import", "hh-import"]


def test_import_trl_implicit_prompt_conversational(tmp_path: Path) -> None:
    row = {
        "chosen": _msgs("user", "Hi", "assistant", "Hello!"),
        "rejected": _msgs("user", "Hi", "assistant", "What?"),
    }
    (rec,) = read_preferences(_jsonl(tmp_path, "imp.jsonl", [row]))
    assert (rec.prompt.content, rec.chosen, rec.rejected) == (_msgs("user", "Hi"), "Hello!", "What?")


BAD_PREFS = [
    (
        {"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"},
        "p.jsonl line 1: 'chosen' and 'rejected' share no start ending in an '\\n\\nAssistant:' turn",
    ),
    (
        {"chosen": "plain answer one", "rejected": "plain answer two"},
        "p.jsonl line 1: 'chosen' and 'rejected' share no start ending in an '\\n\\nAssistant:' turn",
    ),
    (
        HH_SINGLE | {"rejected": HH_SINGLE["chosen"]},
        "p.jsonl line 1: 'chosen' and 'rejected' are the same transcript",
    ),
    (
        {"chosen": "\n\nHuman: q\n\nAssistant: a\n\nHuman: more", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        "p.jsonl line 1: field 'chosen' goes on with a Human turn after its reply",
    ),
    ({"chosen": "\n\nHuman: q\n\nAssistant: a"}, "p.jsonl line 1: field 'rejected' is missing"),
    (
        {"prompt": "q", "chosen": "same", "rejected": " same"},
        "p.jsonl line 1: 'chosen' and 'rejected' are the same text",
    ),
    (
        {"prompt": "q", "chosen": "a", "rejected": 3},
        "p.jsonl line 1: field 'rejected' must be text or a list of chat messages, got a number",
    ),
    ({"prompt": "q", "chosen": "a"}, "p.jsonl line 1: field 'rejected' is missing"),
    (
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": -1},
        "p.jsonl line 1: field 'margin' must be a number >= 0, got -1",
    ),
    (
        {"prompt": "q", "chosen": "a", "rejected": "b", "margin": True},
        "p.jsonl line 1: field 'margin' must be a number >= 0",
    ),
    (
        {"prompt": "q", "chosen": _msgs("assistant", "a"), "rejected": "b"},
        "p.jsonl line 1: field 'chosen' is chat messages but 'prompt' is text",
    ),
    (
        {"prompt": _msgs("user", "q"), "chosen": _msgs("user", "a"), "rejected": _msgs("assistant", "b")},
        "p.jsonl line 1: field 'chosen' must hold the assistant reply to the prompt (roles after the prompt: user)",
    ),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, "p.jsonl line 1: field 'prompt' must be text or a list"),
]


@pytest.mark.parametrize("row,expected", BAD_PREFS)
def test_bad_preferences_named_and_store_unchanged(store, tmp_path, row, expected) -> None:
    path = _jsonl(tmp_path, "p.jsonl", [row])
    before = store.counts()
    with pytest.raises(ValidationError) as e:
        import_preferences(store, path)
    assert any(p.startswith(expected) for p in e.value.problems), e.value.problems
    assert store.counts() == before


def test_preferences_duplicates_and_mixed_formats_reported_together(store, tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path,
        "p.jsonl",
        [
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            {"prompt": "q2", "chosen": "a", "rejected": "b"},
            {"prompt": " q", "chosen": "a ", "rejected": "b"},  # same pair as line 1 once stripped
            HH_SINGLE,
        ],
    )
    with pytest.raises(ValidationError) as e:
        import_preferences(store, path)
    assert e.value.problems == [
        "p.jsonl line 3: duplicate pair (same prompt, chosen and rejected) as p.jsonl line 1",
        "p.jsonl line 4: Anthropic HH (no 'prompt' field), but p.jsonl line 1 is TRL (has a 'prompt' field); "
        "one file must use one format",
    ]
    assert store.counts()["comparisons"] == 0


def test_preferences_csv_and_datasets_dir(tmp_path: Path) -> None:
    from datasets import Dataset, DatasetDict

    csv_path = _write(tmp_path, "p.csv", "prompt,chosen,rejected,margin\nq,a,b,2\nq,a,c,\n")
    assert [(r.chosen, r.rejected, r.strength) for r in read_preferences(csv_path)] == [
        ("a", "b", 2),
        ("a", "c", None),
    ]
    bad = _write(tmp_path, "bad.csv", "prompt,answer\nq,a\n")
    with pytest.raises(ValidationError, match=r"bad\.csv line 1: no 'chosen' column"):
        read_preferences(bad)
    DatasetDict({"test": Dataset.from_list([HH_SINGLE])}).save_to_disk(str(tmp_path / "hh"))
    (rec,) = read_preferences(tmp_path / "hh")
    assert (rec.prompt.content, rec.prompt.split, rec.chosen) == ("What is 2+2?", "test", "4, of course.")


def test_reimport_is_idempotent_and_reuses_prompts(store, tmp_path: Path) -> None:
    import_prompts(store, _jsonl(tmp_path, "prompts.jsonl", [{"prompt": "What is 2+2?", "category": "math"}]))
    path = _jsonl(tmp_path, "hh.jsonl", [HH_SINGLE, HH_MULTI])
    dry = import_preferences(store, path, dry_run=True)
    assert (dry.read, dry.added, dry.already_present, dry.dry_run) == (2, 2, 0, True)
    assert store.counts()["comparisons"] == 0 and store.counts()["prompts"] == 1
    assert import_preferences(store, path).added == 2
    after = store.counts()
    assert after["prompts"] == 2  # "What is 2+2?" reused (keeps its category), one new chat prompt
    again = import_preferences(store, path)
    assert (again.read, again.added, again.already_present) == (2, 0, 2)
    # the same pairs under another file name are the same pairs
    renamed = _jsonl(tmp_path, "hh-copy.jsonl", [HH_MULTI])
    assert import_preferences(store, renamed).already_present == 1
    assert store.counts() == after
    with store.session() as s:
        assert s.scalar(select(Prompt).where(Prompt.text == "What is 2+2?")).category == "math"


def test_import_refuses_a_real_annotators_name(store, tmp_path: Path) -> None:
    store.add_annotator("alice")
    path = _jsonl(tmp_path, "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    before = store.counts()
    with pytest.raises(WorkbenchError, match="'alice' is a real annotator's name"):
        import_preferences(store, path, annotator_name="alice")
    assert store.counts() == before


# ------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------


def _comparison(
    store,
    prompt: str | list,
    a: str = "ans A",
    b: str = "ans B",
    *,
    split=None,
    category=None,
    round: int = 0,
    models=("m1", "m2"),
) -> int:
    store.add_prompts([PromptRecord(prompt, category=category, split=split)])
    with store.session() as s:
        pid = store.prompt_by_hash(s, prompt).id
    store.add_candidates(pid, [CompletionRecord(a, models[0]), CompletionRecord(b, models[1])], 3, round)
    with store.session() as s:
        return s.scalar(select(Comparison.id).where(Comparison.prompt_id == pid).order_by(Comparison.id.desc()))


@pytest.fixture
def labelled(store):
    """Seven comparisons labelled by three annotators (ann1..ann3), one per prompt p1..p7."""
    ann = [store.add_annotator(f"ann{i}")[0].id for i in (1, 2, 3)]
    c = [_comparison(store, f"p{i}", f"A{i}", f"B{i}", category="cat" if i == 1 else None) for i in range(1, 8)]

    def votes(cid, *vs):
        for annotator, v in zip(ann, vs, strict=False):
            if v is not None:
                choice, strength = v if isinstance(v, tuple) else (v, None)
                store.save_label(cid, annotator, choice, strength)

    votes(c[0], ("A", 3), ("A", 1), ("B", 2))  # p1: A wins 2/3, margin mean(3, 1) = 2.0
    votes(c[1], ("B", None), ("B", 2), ("A", 0))  # p2: B wins 2/3, margin = mean of given (2) = 2.0
    votes(c[2], "A", "B")  # p3: 1-1 -> split_vote
    votes(c[3], "tie", "tie", ("A", 3))  # p4: tie wins 2/3
    votes(c[4], "both_bad")  # p5: both_bad, one label
    # p6 (c[5]): no labels
    discarded = store.save_label(c[6], ann[0], "A", 2)  # p7: ann1's A is discarded ...
    store.discard_label(discarded.id, ann[0])
    votes(c[6], None, ("B", 1))  # ... so only ann2's B(1) counts: margin 1.0, agreement 1.0
    return c


def _load(path: Path) -> dict[str, list[dict]]:
    from datasets import load_from_disk

    dd = load_from_disk(str(path))
    return {k: dd[k].to_list() for k in dd}


def test_export_majority_rows_and_manifest(store, labelled, tmp_path: Path) -> None:
    out = tmp_path / "exp"
    res = export_preferences(store, out, ExportOptions(test_fraction=0))
    dropped = {
        "no_labels": 1,
        "too_few_labels": 0,
        "tie": 1,
        "both_bad": 1,
        "split_vote": 1,
        "disagreement": 0,
    }
    assert res.counts == {
        "comparisons_considered": 7,
        "exported_train": 3,
        "exported_test": 0,
        "dropped": dropped,
    }
    base = {"is_tie": False, "is_both_bad": False}
    expected = [
        # text format (all prompts plain): TRL concatenates prompt + chosen, so a "\n" separates them
        {
            "prompt": "p1",
            "chosen": "\nA1",
            "rejected": "\nB1",
            "margin": 2.0,
            "comparison_id": labelled[0],
            "prompt_id": 1,
            "num_labels": 3,
            "agreement": 2 / 3,
            "category": "cat",
            "chosen_model": "m1",
            "rejected_model": "m2",
            "chosen_side": "A",
        }
        | base,
        {
            "prompt": "p2",
            "chosen": "\nB2",
            "rejected": "\nA2",
            "margin": 2.0,
            "comparison_id": labelled[1],
            "prompt_id": 2,
            "num_labels": 3,
            "agreement": 2 / 3,
            "category": "",
            "chosen_model": "m2",
            "rejected_model": "m1",
            "chosen_side": "B",
        }
        | base,
        {
            "prompt": "p7",
            "chosen": "\nB7",
            "rejected": "\nA7",
            "margin": 1.0,
            "comparison_id": labelled[6],
            "prompt_id": 7,
            "num_labels": 1,
            "agreement": 1.0,
            "category": "",
            "chosen_model": "m2",
            "rejected_model": "m1",
            "chosen_side": "B",
        }
        | base,
    ]
    loaded = _load(out)
    assert list(loaded) == ["train"]  # test_fraction 0 and no stored test split: train only
    assert loaded["train"] == expected  # round trip: load_from_disk gives the exported rows
    m = json.loads((out / "manifest.json").read_text())
    assert m == res.manifest
    assert m["rows_sha256"] == rows_sha256(expected)
    assert m["counts"] == res.counts and m["format"] == "text" and m["options"]["test_fraction"] == 0
    assert m["store_url"] == store.display_url and m["workbench_version"] == "0.1.0"
    # 3 + 3 + 2 + 3 + 1 + 0 + 1 (p7's discarded label is not counted) = 13 submitted; 14 label rows
    assert (m["input"]["label_count"], m["input"]["max_label_id"]) == (13, 14)
    assert m["created_at"].endswith("+00:00")
    # same store, same options -> same rows hash; another label changes the labels hash
    again = export_preferences(store, tmp_path / "exp2", ExportOptions(test_fraction=0))
    assert again.manifest["rows_sha256"] == m["rows_sha256"]
    assert again.manifest["input"] == m["input"]


def test_export_unanimous_min_labels_ties_both_bad_margin_none(store, labelled, tmp_path: Path) -> None:
    def run(name, **kw):
        res = export_preferences(store, tmp_path / name, ExportOptions(test_fraction=0, **kw))
        kept = {r["prompt"] for r in _load(tmp_path / name)["train"]}
        return res.counts["dropped"], kept

    # unanimous: p1, p2, p4 (2-1 votes) and p3 (1-1) disagree; p5 both_bad dropped; p6 no labels
    dropped, kept = run("u", disagreement="unanimous")
    assert kept == {"p7"}
    assert dropped == {
        "no_labels": 1,
        "too_few_labels": 0,
        "tie": 0,
        "both_bad": 1,
        "split_vote": 0,
        "disagreement": 4,
    }
    # min_labels=2: p5 (1 label) and p7 (1 submitted; the discarded one does not count) too few
    dropped, kept = run("m", min_labels=2)
    assert kept == {"p1", "p2"}
    assert dropped == {
        "no_labels": 1,
        "too_few_labels": 2,
        "tie": 1,
        "both_bad": 0,
        "split_vote": 1,
        "disagreement": 0,
    }
    # keep ties and both_bad: A over B, margin 0, flagged
    run("k", ties="keep", both_bad="keep")
    rows = {r["prompt"]: r for r in _load(tmp_path / "k")["train"]}
    assert set(rows) == {"p1", "p2", "p4", "p5", "p7"}
    p4, p5 = rows["p4"], rows["p5"]
    assert (p4["chosen"], p4["margin"], p4["is_tie"], p4["is_both_bad"], p4["agreement"]) == (
        "\nA4",
        0.0,
        True,
        False,
        2 / 3,
    )
    assert (p5["chosen"], p5["margin"], p5["is_tie"], p5["is_both_bad"], p5["chosen_side"]) == (
        "\nA5",
        0.0,
        False,
        True,
        "A",
    )
    # margin none: no margin column at all
    run("n", margin="none")
    assert "margin" not in _load(tmp_path / "n")["train"][0]


def test_export_conversational_and_text_refusal(store, tmp_path: Path) -> None:
    ann = store.add_annotator("ann")[0].id
    chat = _msgs("system", "Be brief.", "user", "Hi")
    for cid in (_comparison(store, "plain"), _comparison(store, chat)):
        store.save_label(cid, ann, "A", 3)
    res = export_preferences(store, tmp_path / "auto", ExportOptions(test_fraction=0))  # auto -> conversational
    rows = _load(tmp_path / "auto")["train"]
    assert res.manifest["format"] == "conversational"
    assert [r["prompt"] for r in rows] == [_msgs("user", "plain"), chat]
    assert rows[0]["chosen"] == _msgs("assistant", "ans A") and rows[0]["rejected"] == _msgs("assistant", "ans B")
    with pytest.raises(WorkbenchError, match=r"`format` 'text' cannot hold chat-message prompts \(prompt ids \[2\]"):
        export_preferences(store, tmp_path / "text", ExportOptions(format="text"))
    assert not (tmp_path / "text").exists()
    # the conversational export reads back as TRL conversational preferences (margin 3 -> strength 3)
    back = read_preferences(tmp_path / "auto")
    assert [(r.prompt.content, r.chosen, r.rejected, r.strength) for r in back] == [
        (_msgs("user", "plain"), "ans A", "ans B", 3),
        (chat, "ans A", "ans B", 3),
    ]


def _u(seed: int, prompt) -> float:
    """The split rule, restated: sha256("<seed>:<content hash>") -> [0, 1); below test_fraction = test."""
    return int(hashlib.sha256(f"{seed}:{content_hash(prompt)}".encode()).hexdigest()[:16], 16) / 2**64


def test_export_splits_by_prompt(store, tmp_path: Path) -> None:
    ann = store.add_annotator("ann")[0].id
    prompts = [f"q{i}" for i in range(12)]
    for p in prompts:  # two comparisons per prompt, so a pair-level split could leak prompts
        for cid in (_comparison(store, p, "x", "y"), _comparison(store, p, "x2", "y2")):
            store.save_label(cid, ann, "A")
    res = export_preferences(store, tmp_path / "s", ExportOptions(test_fraction=0.3, seed=1))
    loaded = _load(tmp_path / "s")
    train, test = ({r["prompt"] for r in loaded[k]} for k in ("train", "test"))
    assert train.isdisjoint(test) and train | test == set(prompts)
    # seed 1 puts 5 of the 12 prompts below 0.3 (u = 0.084, 0.229, 0.232, 0.242, 0.280; next 0.388)
    assert test == {p for p in prompts if _u(1, p) < 0.3} and len(test) == 5
    assert res.counts["exported_test"] == 2 * len(test)
    assert res.manifest["rows_sha256"] == rows_sha256(loaded["train"] + loaded["test"])


def test_export_stored_split_wins(store, tmp_path: Path) -> None:
    ann = store.add_annotator("ann")[0].id
    for p, split in (("s-test", "test"), ("s-train", "train"), ("free1", None), ("free2", None)):
        store.save_label(_comparison(store, p, split=split), ann, "A")
    # test_fraction 0: hashing sends nothing to test, but the stored test prompt stays in test
    loaded = _load(export_preferences(store, tmp_path / "a", ExportOptions(test_fraction=0)).path)
    assert [r["prompt"] for r in loaded["test"]] == ["s-test"]
    # test_fraction 0.99: the stored train prompt stays in train whatever the hash says
    loaded = _load(export_preferences(store, tmp_path / "b", ExportOptions(test_fraction=0.99)).path)
    assert "s-train" in {r["prompt"] for r in loaded["train"]}


def test_export_moves_one_prompt_so_test_is_not_empty(store, tmp_path: Path) -> None:
    ann = store.add_annotator("ann")[0].id
    for p in ("alpha", "beta"):
        store.save_label(_comparison(store, p), ann, "A")
    f = min(_u(0, "alpha"), _u(0, "beta")) / 2  # below both hashes: by hash alone test would be empty
    loaded = _load(export_preferences(store, tmp_path / "o", ExportOptions(test_fraction=f)).path)
    nearest = min(("alpha", "beta"), key=lambda p: _u(0, p))  # the prompt nearest the boundary moves
    assert [r["prompt"] for r in loaded["test"]] == [nearest]
    assert len(loaded["train"]) == 1


def test_export_rounds_filter(store, tmp_path: Path) -> None:
    ann = store.add_annotator("ann")[0].id
    store.save_label(_comparison(store, "r0", round=0), ann, "A")
    store.save_label(_comparison(store, "r1", round=1), ann, "B", 2)
    res = export_preferences(store, tmp_path / "r", ExportOptions(rounds=[1], test_fraction=0))
    assert res.counts["comparisons_considered"] == 1
    assert [(r["prompt"], r["chosen_side"], r["margin"]) for r in _load(tmp_path / "r")["train"]] == [("r1", "B", 2.0)]


def test_export_refuses_overwrite_without_force(store, labelled, tmp_path: Path) -> None:
    out = tmp_path / "exports" / "exp"
    first = export_preferences(store, out, ExportOptions(test_fraction=0))
    with pytest.raises(WorkbenchError, match="exists and is not empty; choose another folder or pass force"):
        export_preferences(store, out, ExportOptions(test_fraction=0, min_labels=2))
    assert json.loads((out / "manifest.json").read_text()) == first.manifest  # untouched
    (out / "stale.txt").write_text("old")
    second = export_preferences(store, out, ExportOptions(test_fraction=0, min_labels=2), force=True)
    assert not (out / "stale.txt").exists()  # replaced whole
    assert second.counts["exported_train"] == 2 and len(_load(out)["train"]) == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["exp"]  # no temp folders left behind
    (tmp_path / "empty").mkdir()  # an existing empty folder is fine without force
    export_preferences(store, tmp_path / "empty", ExportOptions(test_fraction=0))


def test_export_nothing_to_export_writes_nothing(store, tmp_path: Path) -> None:
    _comparison(store, "q1")
    _comparison(store, "q2")
    with pytest.raises(WorkbenchError, match=r"0 of 2 comparisons give a pair \(no_labels=2\)"):
        export_preferences(store, tmp_path / "exports" / "none")
    assert not (tmp_path / "exports").exists()


def test_export_options_validated_together(store, tmp_path: Path) -> None:
    bad = ExportOptions(test_fraction=1.5, ties="maybe", min_labels=0, format="xml", rounds=[])
    with pytest.raises(ValidationError) as e:
        export_preferences(store, tmp_path / "x", bad)
    assert [p.split(" ")[0] for p in e.value.problems] == [
        "`test_fraction`",
        "`ties`",
        "`min_labels`",
        "`format`",
        "`rounds`",
    ]
    assert not (tmp_path / "x").exists()


def test_export_options_have_help() -> None:
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(ExportOptions))


def test_labels_hash_traces_a_relabel(store, tmp_path: Path) -> None:
    ann = store.add_annotator("ann")[0].id
    cid = _comparison(store, "q")
    label = store.save_label(cid, ann, "A")
    first = export_preferences(store, tmp_path / "1", ExportOptions(test_fraction=0)).manifest["input"]
    store.discard_label(label.id, ann)
    store.save_label(cid, ann, "B")  # reuses the label row: same max id, same count
    second = export_preferences(store, tmp_path / "2", ExportOptions(test_fraction=0)).manifest["input"]
    assert (first["max_label_id"], first["label_count"]) == (second["max_label_id"], second["label_count"]) == (1, 1)
    assert first["labels_sha256"] != second["labels_sha256"]
    with store.session() as s:
        assert s.scalar(select(Label.choice)) == "B"
