"""Bad input: hypothesis throws generated files at import_prompts / import_preferences / export.

The property, for every file: the import either succeeds and the store then holds exactly the
file's content (stripped, as the importer documents), or it raises a WorkbenchError (ValidationError
for row problems) and the store is byte-for-byte unchanged (counts and a hash of every row).
Files: arbitrary unicode (including NUL and lone-surrogate escapes), empty and whitespace-only texts,
50k-character texts (over any small model's context), wrong types, duplicate rows, mixed
preference formats, and valid files cut at a random byte. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_tools import store_fingerprint

from rlhf.errors import ValidationError, WorkbenchError
from rlhf.io import ExportOptions, export_preferences, import_preferences, import_prompts
from rlhf.store import Store, content_hash

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")

# -- strategies -----------------------------------------------------------------------------------

# Any code point, surrogates included (they reach the importer as JSON "\udXXX" escapes).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=80)
huge_text = st.builds(
    lambda c, n: (c * n).strip() or "x" * n, st.sampled_from("aé漢🙂 \n"), st.integers(50_000, 52_000)
)
texts = st.one_of(any_text, any_text, st.just(""), st.just(" \t\n"), huge_text)
messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "bot"]), "content": texts}),
    max_size=3,
)
wrong = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
any_value = st.one_of(texts, texts, messages, wrong)


def good_text(v: object) -> bool:
    return isinstance(v, str) and bool(v.strip()) and not UNSTORABLE.search(v)


clean_text = st.one_of(any_text.filter(good_text), any_text.filter(good_text), huge_text)
clean_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": clean_text}),
    min_size=1,
    max_size=3,
)


def stripped(v: str | list[dict]) -> str | list[dict]:
    return v.strip() if isinstance(v, str) else [{"role": m["role"], "content": m["content"].strip()} for m in v]


# -- writing files ----------------------------------------------------------------------------------


def write(records: list[dict], fmt: str, folder: Path, name: str) -> Path:
    """Records as .jsonl / .json (array) / .csv; non-text CSV cells as JSON. Encoded with
    surrogatepass, so a lone surrogate written raw becomes invalid UTF-8 (the importer must refuse)."""
    if fmt == "csv":
        cols = sorted({k for r in records for k in r}) or ["prompt"]
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(cols)
        for r in records:
            w.writerow(["" if k not in r else r[k] if isinstance(r[k], str) else json.dumps(r[k]) for k in cols])
        text = buf.getvalue()
    elif fmt == "json":
        text = json.dumps(records, ensure_ascii=False, indent=1)
    else:
        text = "".join(json.dumps(r, ensure_ascii=bool(i % 2)) + "\n" for i, r in enumerate(records))
    path = folder / f"{name}.{fmt}"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


def truncate(path: Path, frac: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def stored_contents(store: Store) -> set[str]:
    from sqlalchemy import select

    from rlhf.schema import Prompt

    with store.session() as s:
        return set(s.scalars(select(Prompt.content_hash)))


def check_outcome(store: Store, fn, path: Path):
    """Run the import; on error assert the store is unchanged and the error names the file."""
    before = store_fingerprint(store)
    try:
        result = fn(store, path)
    except WorkbenchError as e:
        assert store_fingerprint(store) == before, "a rejected import changed the store"
        assert path.name in str(e)
        if isinstance(e, ValidationError):
            assert e.problems and all(path.name in p for p in e.problems)
        return None
    after = store_fingerprint(store)
    assert result.read == result.added + result.already_present
    if result.added == 0:
        assert after == before
    return result


@pytest.fixture
def store(rel_store):
    return rel_store


# -- prompts -------------------------------------------------------------------------------------


@SETTINGS
@given(
    data=st.data(),
    fmt=st.sampled_from(["jsonl", "json", "csv"]),
    cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_prompt_import_is_all_or_nothing(store, data, fmt, cut):
    clean = data.draw(st.booleans(), "clean")
    if clean:
        contents = data.draw(
            st.lists(
                clean_text if fmt == "csv" else st.one_of(clean_text, clean_messages),
                min_size=1,
                max_size=5,
                unique_by=lambda c: content_hash(stripped(c)),
            ),
            "contents",
        )
        records = [{"prompt": c, **({"id": i} if i % 2 else {})} for i, c in enumerate(contents)]
    else:
        records = data.draw(
            st.lists(
                st.dictionaries(
                    st.sampled_from(["prompt", "messages", "id", "category", "tags", "split"]), any_value, max_size=4
                ),
                max_size=5,
            ),
            "records",
        )
        if records and data.draw(st.booleans(), "duplicate"):
            records.append(dict(records[0]))
    with tempfile.TemporaryDirectory() as d:
        path = write(records, fmt, Path(d), "prompts")
        if cut is not None:
            truncate(path, cut)
        result = check_outcome(store, import_prompts, path)
    if clean and cut is None:
        assert result is not None, "a valid file was refused"
        held = stored_contents(store)
        assert all(content_hash(stripped(c)) in held for c in contents)
        # Exact content: the stored prompt reads back as the stripped input.
        from sqlalchemy import select

        from rlhf.schema import Prompt

        with store.session() as s:
            for c in contents:
                p = s.scalar(select(Prompt).where(Prompt.content_hash == content_hash(stripped(c))))
                assert p.content == stripped(c)


# -- preferences + export -------------------------------------------------------------------------


def hh(prompt: str, reply: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: {reply}"


@SETTINGS
@given(data=st.data(), fmt=st.sampled_from(["jsonl", "json", "csv"]), cut=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_preference_import_round_trips_through_export(store, data, fmt, cut, tmp_path):
    clean = data.draw(st.booleans(), "clean")
    word = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30).filter(
        lambda t: t.strip() and "\n\nHuman:" not in t and "Assistant:" not in t
    )
    if clean:
        triples = data.draw(
            st.lists(
                st.tuples(st.one_of(word, huge_text), word, word).filter(lambda t: t[1].strip() != t[2].strip()),
                min_size=1,
                max_size=4,
                unique_by=lambda t: tuple(x.strip() for x in t),
            ),
            "triples",
        )
        margins = data.draw(st.lists(st.sampled_from([0, 1, 2, 3]), min_size=len(triples), max_size=len(triples)))
        records = [{"prompt": p, "chosen": c, "rejected": r, "margin": m} for (p, c, r), m in zip(triples, margins)]
    else:
        records = data.draw(
            st.lists(
                st.dictionaries(
                    st.sampled_from(["prompt", "chosen", "rejected", "margin", "id", "tags"]), any_value, max_size=5
                ),
                max_size=4,
            ),
            "records",
        )
        if data.draw(st.booleans(), "mixed formats"):  # one HH row among TRL rows (or alone)
            records.append({"chosen": hh("hi", "a"), "rejected": hh("hi", "b")})
        if records and data.draw(st.booleans(), "duplicate"):
            records.append(dict(records[0]))
    path = write(records, fmt, tmp_path, "prefs")
    if cut is not None:
        truncate(path, cut)
    result = check_outcome(store, import_preferences, path)
    if not (clean and cut is None):
        return
    assert result is not None, "a valid file was refused"
    out = tmp_path / "export"
    export_preferences(store, out, ExportOptions(test_fraction=0.0, format="conversational"), force=True)
    from datasets import load_from_disk

    rows = load_from_disk(str(out))["train"]
    exported = {
        (r["prompt"][-1]["content"], r["chosen"][0]["content"], r["rejected"][0]["content"]): r["margin"] for r in rows
    }
    for (p, c, r), m in zip(triples, margins):
        key = (p.strip(), c.strip(), r.strip())
        assert key in exported, f"pair {key!r} lost between import and export"
        if result.already_present == 0:
            assert exported[key] == m


@SETTINGS
@given(prompt=clean_text, reply_a=clean_text, reply_b=clean_text)
def test_hh_and_trl_rows_in_one_file_are_refused_whole(store, prompt, reply_a, reply_b, tmp_path):
    records = [
        {"prompt": "trl prompt", "chosen": "yes", "rejected": "no"},
        {"chosen": hh(prompt, reply_a), "rejected": hh(prompt, reply_b)},
    ]
    path = write(records, "jsonl", tmp_path, "mixed")
    before = store_fingerprint(store)
    with pytest.raises(ValidationError, match="one file must use one format"):
        import_preferences(store, path)
    assert store_fingerprint(store) == before


@pytest.mark.parametrize("text", ["a\\u0000b", "a\\ud800b", "\\udfff"])
def test_nul_and_lone_surrogates_are_refused_with_the_line(store, tmp_path, text):
    """Found by the properties above: these reached the database and raised a raw UnicodeEncodeError
    (both backends) or psycopg DataError (PostgreSQL, NUL) instead of a ValidationError."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "TEXT"}\n'.replace("TEXT", text))
    before = store_fingerprint(store)
    with pytest.raises(ValidationError, match="p.jsonl line 2: contains"):
        import_prompts(store, path)
    prefs = tmp_path / "q.jsonl"
    prefs.write_text('{"prompt": "p", "chosen": "TEXT", "rejected": "r"}\n'.replace("TEXT", text))
    with pytest.raises(ValidationError, match="q.jsonl line 1: contains"):
        import_preferences(store, prefs)
    assert store_fingerprint(store) == before
