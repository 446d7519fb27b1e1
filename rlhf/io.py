"""Move data in and out of the store: import prompts and preferences, export preferences for TRL.

Reads JSON Lines (`.jsonl`, or `.json` holding JSON Lines or one list of objects), CSV with a header
row, and folders written by `datasets`' `save_to_disk` (a Dataset or a DatasetDict). Every problem in
a file is collected and reported at once, each naming the file, the line (or row) and the field; an
import writes nothing unless the whole file is valid, and then writes it in one transaction.

Export writes `<out_dir>/` = a `datasets.DatasetDict` (train, and test when non-empty) in TRL's
preference columns (`prompt`, `chosen`, `rejected`, `margin`) plus provenance columns, and
`manifest.json` tracing it back to the store snapshot (label count, max label id, labels hash) with
a hash of the exported rows. The folder is built beside the target and renamed into place.
Human-evaluation comparisons (source `evaluation:<run>`, `rlhf.human_eval`) are never exported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from io import StringIO
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased, joinedload, selectinload

from rlhf import __version__
from rlhf.errors import ValidationError, WorkbenchError
from rlhf.human_eval import SOURCE_PREFIX as EVALUATION_PREFIX
from rlhf.schema import SPLITS, Annotator, Comparison, Completion, Label, Prompt
from rlhf.store import PromptRecord, Store, _chunks, content_hash

log = logging.getLogger(__name__)

SUPPORTED = ".jsonl, .json, .csv, or a folder written by datasets' save_to_disk"
MESSAGE_ROLES = ("system", "user", "assistant")
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
# Length limits of the store's String columns (PostgreSQL enforces them; SQLite does not).
MAX_LEN = {"id": 200, "category": 100, "source": 200}
# TRL's RewardTrainer tokenizes a text-format pair as `prompt + chosen` with nothing in between;
# the exporter puts this between them when neither side already has whitespace there.
TEXT_SEPARATOR = "\n"


# ---------------------------------------------------------------------------------------------
# Reading rows from a file or a dataset folder
# ---------------------------------------------------------------------------------------------


@dataclass
class _Row:
    where: str  # "prompts.jsonl line 7": the prefix of every problem about this row
    data: dict[str, Any]
    split: str | None = None  # from a DatasetDict split named train/test
    from_csv: bool = False  # cells are strings: tags may be "a;b", messages/margin need parsing
    error: str | None = None  # set when the line itself could not be read (data is then empty)


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "text"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _read_rows(path: Path) -> tuple[list[_Row], list[str] | None]:
    """Rows of a supported file or folder in file order (unreadable lines as rows with `error`),
    and the CSV header (None for other formats).

    File-level problems (missing, unsupported, binary) raise at once: there are no lines to name."""
    path = Path(path)
    if not path.exists():
        raise WorkbenchError(f"{path} does not exist; give a {SUPPORTED}")
    if path.is_dir():
        return _dataset_rows(path), None
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise WorkbenchError(f"{path}: unsupported file type {suffix or '(none)'!r}; supported: {SUPPORTED}")
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        kind = "CSV" if suffix == ".csv" else "JSON"
        raise WorkbenchError(f"{path} looks like a binary file, not {kind} text; check that it is the right file")
    if suffix == ".csv":
        return _csv_rows(path, data)
    if suffix == ".json" and data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        return _json_array_rows(path, data), None
    return _jsonl_rows(path, data), None


def _decode_lines(data: bytes) -> list[tuple[int, str | None]]:
    """(1-based line number, text), text None where the line is not UTF-8."""
    out = []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            out.append((n, None))
            continue
        out.append((n, line.removeprefix("\ufeff") if n == 1 else line))
    return out


def _utf8_error(path: Path, n: int, data: bytes) -> _Row:
    raw = data.split(b"\n")[n - 1]
    try:
        raw.decode("utf-8")
        detail = ""
    except UnicodeDecodeError as e:
        detail = f" (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
    where = f"{path.name} line {n}"
    return _Row(where, {}, error=f"{where}: not valid UTF-8{detail}; save the file as UTF-8")


def _error(where: str, message: str) -> _Row:
    return _Row(where, {}, error=f"{where}: {message}")


def _jsonl_rows(path: Path, data: bytes) -> list[_Row]:
    rows = []
    for n, line in _decode_lines(data):
        where = f"{path.name} line {n}"
        if line is None:
            rows.append(_utf8_error(path, n, data))
            continue
        if not line.strip():
            continue  # blank lines (and a trailing newline) are allowed
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            rows.append(_error(where, f"malformed JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            hint = " (a .json file holding a list must start with '[')" if path.suffix == ".json" else ""
            rows.append(_error(where, f"expected a JSON object, got {_kind(obj)}{hint}"))
            continue
        rows.append(_Row(where, obj))
    return rows


def _whole_text(path: Path, data: bytes) -> tuple[str | None, list[_Row]]:
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        return None, [_utf8_error(path, n, data) for n, line in _decode_lines(data) if line is None]


def _json_array_rows(path: Path, data: bytes) -> list[_Row]:
    """A .json file holding one list of objects; each item is named by its start line and index."""
    text, rows = _whole_text(path, data)
    if text is None:
        return rows
    dec = json.JSONDecoder()

    def skip(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def line_at(i: int) -> str:
        return f"{path.name} line {text.count(chr(10), 0, i) + 1}"

    i, item = skip(skip(0) + 1), 0  # just past the opening '['
    if i < len(text) and text[i] == "]":
        i += 1
    else:
        while True:
            item += 1
            where = f"{line_at(i)} (item {item})"
            try:
                obj, i = dec.raw_decode(text, i)
            except json.JSONDecodeError as e:
                return [
                    *rows,
                    _error(f"{path.name} line {e.lineno}", f"malformed JSON ({e.msg} at column {e.colno})"),
                ]
            if isinstance(obj, dict):
                rows.append(_Row(where, obj))
            else:
                rows.append(_error(where, f"expected a JSON object, got {_kind(obj)}"))
            i = skip(i)
            if i < len(text) and text[i] == ",":
                i = skip(i + 1)
                continue
            if i < len(text) and text[i] == "]":
                i += 1
                break
            return [*rows, _error(line_at(i), f"malformed JSON (expected ',' or ']' after item {item})")]
    if skip(i) < len(text):
        rows.append(_error(line_at(skip(i)), "unexpected content after the closing ']'"))
    return rows


def _csv_rows(path: Path, data: bytes) -> tuple[list[_Row], list[str] | None]:
    text, rows = _whole_text(path, data)
    if text is None:
        return rows, None
    reader = csv.reader(StringIO(text, newline=""))
    header: list[str] | None = None
    while True:
        where = f"{path.name} line {reader.line_num + 1}"  # a quoted cell may span lines: its first
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            rows.append(_error(f"{path.name} line {reader.line_num}", f"malformed CSV ({e})"))
            break
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                rows.append(_error(where, f"repeated column(s) {', '.join(map(repr, dupes))}"))
            continue
        if len(cells) != len(header):
            rows.append(_error(where, f"{len(cells)} fields, but the header has {len(header)}"))
            continue
        # An empty cell means "not given", like a missing key in JSON.
        data_ = {h: (c if c != "" else None) for h, c in zip(header, cells, strict=True)}
        rows.append(_Row(where, data_, from_csv=True))
    return rows, header


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable(v: Any) -> str | None:
    """What in a value no store can hold as text: NUL (PostgreSQL refuses it) or a lone surrogate
    (JSON's `\\ud800` escapes decode to one; it has no UTF-8 encoding), or None."""
    if isinstance(v, str):
        m = _UNSTORABLE.search(v)
        if m is None:
            return None
        if m.group() == "\x00":
            return "a NUL character (\\u0000)"
        return "a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape)"
    if isinstance(v, dict):
        return next((w for w in map(_unstorable, [*v.keys(), *v.values()]) if w), None)
    if isinstance(v, (list, tuple)):
        return next((w for w in map(_unstorable, v) if w), None)
    return None


def _refuse_unstorable(row: _Row) -> _Row:
    # Checked up front so such a file is refused with its line named, not by a database traceback.
    if row.error is None and (what := _unstorable(row.data)):
        return _error(row.where, f"contains {what}, which cannot be stored; remove it")
    return row


def _check_columns(path: Path, columns: list[str] | None, need_any: tuple[str, ...], problems: list[str]) -> bool:
    """A CSV without any of the `need_any` columns gets one problem, not one per row."""
    if columns is None or any(c in columns for c in need_any):
        return True
    have = ", ".join(columns) or "none"
    problems.append(f"{path.name} line 1: no {' or '.join(map(repr, need_any))} column (columns: {have})")
    return False


def _dataset_rows(path: Path) -> list[_Row]:
    if not ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        raise WorkbenchError(
            f"{path} is a folder but not one written by datasets' save_to_disk (no dataset_info.json or "
            f"dataset_dict.json); supported: {SUPPORTED}"
        )
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged folder; the message is what matters
        raise WorkbenchError(f"{path}: cannot load the dataset folder ({type(e).__name__}: {e})") from e
    parts = list(ds.items()) if isinstance(ds, DatasetDict) else [(None, ds)]
    rows = []
    for split, d in parts:
        prefix = f"{path.name} split {split!r}" if split else path.name
        for i, row in enumerate(d):
            # Row indices are 0-based, as `dataset[i]` reads them.
            rows.append(_Row(f"{prefix} row {i}", dict(row), split=split if split in SPLITS else None))
    return rows


# ---------------------------------------------------------------------------------------------
# Field checks (each adds problems and returns the cleaned value, or None)
# ---------------------------------------------------------------------------------------------


def _check_text(v: Any, where: str, name: str, problems: list[str]) -> str | None:
    if v is None:
        problems.append(f"{where}: field {name!r} is empty")
        return None
    if not isinstance(v, str):
        problems.append(f"{where}: field {name!r} must be text, got {_kind(v)}")
        return None
    if not v.strip():
        problems.append(f"{where}: field {name!r} is empty")
        return None
    return v.strip()


def _check_messages(v: Any, where: str, name: str, problems: list[str]) -> list[dict[str, str]] | None:
    """A non-empty list of {role, content}: role in system/user/assistant, content non-empty text.

    Only role and content are kept (content stripped), so the same conversation hashes the same."""
    if not isinstance(v, list):
        problems.append(f"{where}: field {name!r} must be a list of chat messages, got {_kind(v)}")
        return None
    if not v:
        problems.append(f"{where}: field {name!r} is empty (no messages)")
        return None
    out, ok = [], True
    for k, m in enumerate(v, 1):
        at = f"{where}: field {name!r} message {k}"
        if not isinstance(m, dict):
            problems.append(f"{at} must be an object with 'role' and 'content', got {_kind(m)}")
            ok = False
            continue
        role, content = m.get("role"), m.get("content")
        if role not in MESSAGE_ROLES:
            problems.append(f"{at}: role {role!r} is not one of {', '.join(MESSAGE_ROLES)}")
            ok = False
        if not isinstance(content, str) or not content.strip():
            what = "is empty" if content is None or isinstance(content, str) else f"must be text, got {_kind(content)}"
            problems.append(f"{at}: content {what}")
            ok = False
            continue
        out.append({"role": role, "content": content.strip()})
    return out if ok else None


def _prompt_content(row: _Row, problems: list[str]) -> str | list[dict[str, str]] | None:
    """Exactly one of `prompt` (text or messages) and `messages` (messages)."""
    d = row.data
    p, m = d.get("prompt"), d.get("messages")
    if p is not None and m is not None:
        problems.append(f"{row.where}: give field 'prompt' or field 'messages', not both")
        return None
    if p is None and m is None:
        if "prompt" in d or "messages" in d:
            problems.append(f"{row.where}: field {'prompt' if 'prompt' in d else 'messages'!r} is empty")
        else:
            problems.append(f"{row.where}: field 'prompt' is missing (give 'prompt' or 'messages')")
        return None
    if m is not None:
        if row.from_csv:
            m = _json_cell(m, row.where, "messages", problems)
            if m is None:
                return None
        return _check_messages(m, row.where, "messages", problems)
    if isinstance(p, list):
        return _check_messages(p, row.where, "prompt", problems)
    if not isinstance(p, str):
        problems.append(f"{row.where}: field 'prompt' must be text or a list of chat messages, got {_kind(p)}")
        return None
    return _check_text(p, row.where, "prompt", problems)


def _json_cell(v: str, where: str, name: str, problems: list[str]) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError as e:
        problems.append(f"{where}: field {name!r} is not valid JSON ({e.msg})")
        return None


def _prompt_record(row: _Row, source: str, problems: list[str]) -> PromptRecord | None:
    """The prompt of a row with its optional id, category, tags, split and source."""
    n = len(problems)
    content = _prompt_content(row, problems)
    d, where = row.data, row.where
    ext = d.get("id")
    if ext is not None and (isinstance(ext, bool) or not isinstance(ext, (str, int))):
        problems.append(f"{where}: field 'id' must be text or a whole number, got {_kind(ext)}")
    ext = (str(ext).strip() or None) if ext is not None else None
    category = d.get("category")
    if category is not None and not isinstance(category, str):
        problems.append(f"{where}: field 'category' must be text, got {_kind(category)}")
    category = (category.strip() or None) if isinstance(category, str) else None
    src = d.get("source")
    if src is not None and not isinstance(src, str):
        problems.append(f"{where}: field 'source' must be text, got {_kind(src)}")
    src = (src.strip() if isinstance(src, str) else "") or source
    for name, value in (("id", ext), ("category", category), ("source", src)):
        if value is not None and len(value) > MAX_LEN[name]:
            problems.append(f"{where}: field {name!r} is longer than {MAX_LEN[name]} characters")
    tags = _tags(d.get("tags"), row, problems)
    split = d.get("split")
    split = split.strip() if isinstance(split, str) else split
    if split is not None and split not in SPLITS:
        problems.append(f"{where}: field 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
    split = split if split is not None else row.split
    if len(problems) > n or content is None:
        return None
    return PromptRecord(content=content, external_id=ext, source=src, category=category, tags=tags, split=split)


def _tags(v: Any, row: _Row, problems: list[str]) -> list[str]:
    if v is None:
        return []
    if row.from_csv and isinstance(v, str):
        # A CSV cell holds "a;b" or a JSON list.
        if v.lstrip().startswith("["):
            v = _json_cell(v, row.where, "tags", problems)
            if v is None:
                return []
        else:
            v = v.split(";")
    if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
        problems.append(f"{row.where}: field 'tags' must be a list of text, got {_kind(v)}")
        return []
    return [t.strip() for t in v if t.strip()]


def _bad(path: Path, what: str, problems: list[str]) -> ValidationError:
    return ValidationError(f"{what} file {path}", problems)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    read: int  # records in the file
    added: int  # prompts (or comparisons, for preferences) written to the store
    already_present: int  # skipped: the same prompt (or pair) was already stored
    dry_run: bool


def read_prompts(path: Path, source: str | None = None) -> list[PromptRecord]:
    """Validated prompts of a file or dataset folder (see module doc); ValidationError lists every problem.

    A row's own `source` wins over `source`, which defaults to the file name. In a DatasetDict, a
    split named train/test becomes the prompt's `split` unless the row has one."""
    path = Path(path)
    rows, columns = _read_rows(path)
    rows = [_refuse_unstorable(row) for row in rows]
    records: list[PromptRecord] = []
    problems: list[str] = []
    if _check_columns(path, columns, ("prompt", "messages"), problems):
        seen: dict[str, str] = {}
        for row in rows:
            if row.error:
                problems.append(row.error)
                continue
            rec = _prompt_record(row, source or path.name, problems)
            if rec is None:
                continue
            h = content_hash(rec.content)
            if h in seen:
                problems.append(f"{row.where}: duplicate prompt, the same as {seen[h]}")
                continue
            seen[h] = row.where
            records.append(rec)
    if not rows and not problems:
        problems.append(f"{path.name}: holds no prompts{' (only a header row)' if columns else ''}")
    if problems:
        raise _bad(path, "prompts", problems)
    return records


def import_prompts(store: Store, path: Path, dry_run: bool = False, source: str | None = None) -> ImportResult:
    """Read, validate and add the prompts of `path` in one transaction (nothing on any problem)."""
    store.require_ready()
    records = read_prompts(Path(path), source)
    if dry_run:
        with store.session() as s:
            present = len(_existing_prompts(s, [content_hash(r.content) for r in records]))
        added = len(records) - present
    else:
        with store.transaction() as s:
            rows, present = store._add_prompts(s, records)
        added = len(rows)
    log.info(
        "prompts from %s: %d read, %d added, %d already present%s",
        path,
        len(records),
        added,
        present,
        " (dry run)" if dry_run else "",
    )
    return ImportResult(read=len(records), added=added, already_present=present, dry_run=dry_run)


def _existing_prompts(s: Session, hashes: list[str]) -> dict[str, Prompt]:
    out = {}
    for chunk in _chunks(sorted(set(hashes)), 500):
        for p in s.scalars(select(Prompt).where(Prompt.content_hash.in_(chunk))):
            out[p.content_hash] = p
    return out


# ---------------------------------------------------------------------------------------------
# Preferences
# ---------------------------------------------------------------------------------------------


@dataclass
class PreferenceRecord:
    """One judged pair: `chosen` was preferred over `rejected` as answers to `prompt`."""

    prompt: PromptRecord
    chosen: str
    rejected: str
    strength: int | None = None  # 0..3 on the store's scale, from `margin` (see `margin_to_strength`)
    where: str = ""  # "prefs.jsonl line 3"


def margin_to_strength(margin: float) -> int:
    """A TRL `margin` (>= 0) to the store's strength 0..3: rounded half up, then capped at 3.

    The export maps strength s back to margin s, so 0, 1, 2, 3 survive a round trip unchanged;
    0.5 -> 1, 2.4 -> 2, 7.0 -> 3."""
    return min(3, math.floor(margin + 0.5))


def read_preferences(path: Path) -> list[PreferenceRecord]:
    """Validated preference pairs of a file or dataset folder; ValidationError lists every problem.

    Two formats, told apart by the columns (one per file):
    - TRL: `prompt`, `chosen`, `rejected`, optional `margin`, `id`, `category`, `tags`, `split`.
      Plain text, or conversational: prompt = chat messages, chosen/rejected = the assistant
      message(s), or the whole conversation starting with the prompt (the prompt is cut off).
      Several assistant messages are joined with a blank line. `margin` (>= 0) becomes the label's
      strength through `margin_to_strength` (round half up, cap 3); no margin, no strength.
    - Anthropic HH: only `chosen` and `rejected`, whole "\\n\\nHuman: ... \\n\\nAssistant: ..."
      transcripts; the prompt is their shared start up to the last shared "\\n\\nAssistant:". One
      Human turn gives a plain-text prompt, more give chat messages. (Lists of chat messages without
      a `prompt`, TRL's implicit-prompt format, are split at their shared messages the same way.)
    """
    path = Path(path)
    rows, columns = _read_rows(path)
    rows = [_refuse_unstorable(row) for row in rows]
    records: list[PreferenceRecord] = []
    problems: list[str] = []
    if _check_columns(path, columns, ("chosen",), problems):
        good = [row for row in rows if not row.error]
        first_fmt = ("trl" if "prompt" in good[0].data else "hh", good[0].where) if good else None
        seen_pairs: dict[tuple[str, str, str], str] = {}
        prompt_split: dict[str, tuple[str | None, str]] = {}
        for row in rows:
            if row.error:
                problems.append(row.error)
                continue
            fmt = "trl" if "prompt" in row.data else "hh"
            if first_fmt and fmt != first_fmt[0]:
                names = {"trl": "TRL (has a 'prompt' field)", "hh": "Anthropic HH (no 'prompt' field)"}
                problems.append(
                    f"{row.where}: {names[fmt]}, but {first_fmt[1]} is {names[first_fmt[0]]}; "
                    "one file must use one format"
                )
                continue
            rec = _trl_record(row, path, problems) if fmt == "trl" else _hh_record(row, path, problems)
            if rec is None:
                continue
            h = content_hash(rec.prompt.content)
            key = (h, rec.chosen, rec.rejected)
            if key in seen_pairs:
                problems.append(f"{row.where}: duplicate pair (same prompt, chosen and rejected) as {seen_pairs[key]}")
                continue
            seen_pairs[key] = row.where
            split, at = prompt_split.setdefault(h, (rec.prompt.split, row.where))
            if split != rec.prompt.split and None not in (split, rec.prompt.split):
                problems.append(f"{row.where}: prompt has split {rec.prompt.split!r} but {split!r} at {at}")
                continue
            records.append(rec)
    if not rows and not problems:
        problems.append(f"{path.name}: holds no preference pairs{' (only a header row)' if columns else ''}")
    if problems:
        raise _bad(path, "preferences", problems)
    return records


def _strength(row: _Row, problems: list[str]) -> int | None:
    m = row.data.get("margin")
    if m is None:
        return None
    if row.from_csv and isinstance(m, str):
        try:
            m = float(m)
        except ValueError:
            problems.append(f"{row.where}: field 'margin' must be a number >= 0, got {m!r}")
            return None
    if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
        problems.append(f"{row.where}: field 'margin' must be a number >= 0, got {m!r}")
        return None
    return margin_to_strength(m)


def _reply(row: _Row, name: str, prompt: str | list[dict[str, str]] | None, problems: list[str]) -> str | None:
    """A TRL completion: text, or chat messages of which only the assistant reply is kept.

    `prompt` None: the prompt itself was invalid, so only the field's own shape is checked."""
    where = row.where
    if name not in row.data:
        problems.append(f"{where}: field {name!r} is missing")
        return None
    v = row.data[name]
    if isinstance(v, str) or v is None:
        return _check_text(v, where, name, problems)
    if not isinstance(v, list):
        problems.append(f"{where}: field {name!r} must be text or a list of chat messages, got {_kind(v)}")
        return None
    if prompt is None:
        _check_messages(v, where, name, problems)
        return None
    if isinstance(prompt, str):
        problems.append(f"{where}: field {name!r} is chat messages but 'prompt' is text; use text for both")
        return None
    msgs = _check_messages(v, where, name, problems)
    if msgs is None:
        return None
    if msgs[: len(prompt)] == prompt:
        msgs = msgs[len(prompt) :]  # the whole conversation was given: keep what follows the prompt
    if not msgs or any(m["role"] != "assistant" for m in msgs):
        roles = ", ".join(m["role"] for m in msgs) or "none"
        problems.append(
            f"{where}: field {name!r} must hold the assistant reply to the prompt (roles after the prompt: {roles})"
        )
        return None
    return "\n\n".join(m["content"] for m in msgs)


def _trl_record(row: _Row, path: Path, problems: list[str]) -> PreferenceRecord | None:
    n = len(problems)
    prompt = _prompt_record(row, path.name, problems)
    content = prompt.content if prompt is not None else None
    chosen = _reply(row, "chosen", content, problems)
    rejected = _reply(row, "rejected", content, problems)
    strength = _strength(row, problems)
    if chosen is not None and chosen == rejected:
        problems.append(f"{row.where}: 'chosen' and 'rejected' are the same text; there is nothing to prefer")
    if len(problems) > n:
        return None
    return PreferenceRecord(prompt, chosen, rejected, strength, row.where)


def _hh_record(row: _Row, path: Path, problems: list[str]) -> PreferenceRecord | None:
    n = len(problems)
    c, r = row.data.get("chosen"), row.data.get("rejected")
    for name in ("chosen", "rejected"):
        if name not in row.data:
            problems.append(f"{row.where}: field {name!r} is missing")
    if len(problems) > n:
        return None
    if isinstance(c, list) and isinstance(r, list):
        c_msgs = _check_messages(c, row.where, "chosen", problems)
        r_msgs = _check_messages(r, row.where, "rejected", problems)
        split = _split_messages(c_msgs, r_msgs, row.where, problems) if c_msgs and r_msgs else None
    else:
        c, r = _check_text(c, row.where, "chosen", problems), _check_text(r, row.where, "rejected", problems)
        split = _split_hh(c, r, row.where, problems) if c and r else None
    # Metadata fields (id, category, tags, split) apply as in TRL rows; the prompt comes from the split.
    meta = _prompt_record(_Row(row.where, {**row.data, "prompt": "-"}, row.split, row.from_csv), path.name, problems)
    if len(problems) > n or split is None or meta is None:
        return None
    content, chosen, rejected = split
    meta.content = content
    return PreferenceRecord(meta, chosen, rejected, None, row.where)


def _split_hh(c: str, r: str, where: str, problems: list[str]) -> tuple[Any, str, str] | None:
    """Anthropic HH transcripts -> (prompt, chosen reply, rejected reply)."""
    if c == r:
        problems.append(f"{where}: 'chosen' and 'rejected' are the same transcript; there is nothing to prefer")
        return None
    # Transcripts start with "\n\nHuman:"; the leading newlines were stripped by _check_text.
    c, r = "\n\n" + c, "\n\n" + r
    shared = len(os.path.commonprefix([c, r]))
    cut = c.rfind(HH_ASSISTANT, 0, shared)  # the last marker lying wholly inside the shared start
    if cut < 0:
        problems.append(
            f"{where}: 'chosen' and 'rejected' share no start ending in an '\\n\\nAssistant:' turn; "
            "expected Anthropic HH transcripts ('\\n\\nHuman: ...\\n\\nAssistant: ...')"
        )
        return None
    end = cut + len(HH_ASSISTANT)
    parts = re.split(r"\n\n(Human|Assistant):", c[:end])
    if parts[0].strip():
        problems.append(f"{where}: field 'chosen' does not start with a '\\n\\nHuman:' turn")
        return None
    turns = [
        {"role": "user" if role == "Human" else "assistant", "content": text.strip()}
        for role, text in zip(parts[1::2], parts[2::2], strict=True)
    ][:-1]  # the last is the empty "\n\nAssistant:" the replies follow
    ok = bool(turns)
    for k, t in enumerate(turns, 1):
        if not t["content"]:
            problems.append(f"{where}: field 'chosen' turn {k} ({t['role']}) is empty")
            ok = False
    replies = []
    for name, text in (("chosen", c), ("rejected", r)):
        reply = text[end:].strip()
        if not reply:
            problems.append(f"{where}: field {name!r} has an empty reply after the shared prompt")
            ok = False
        elif HH_HUMAN in "\n\n" + reply:
            problems.append(
                f"{where}: field {name!r} goes on with a Human turn after its reply; the two transcripts "
                "must differ only in the last Assistant turn"
            )
            ok = False
        replies.append(reply)
    if not ok:
        return None
    prompt = turns[0]["content"] if len(turns) == 1 and turns[0]["role"] == "user" else turns
    return prompt, replies[0], replies[1]


def _split_messages(c: list, r: list, where: str, problems: list[str]) -> tuple[Any, str, str] | None:
    """TRL's implicit-prompt conversational pair -> (shared messages, chosen reply, rejected reply)."""
    k = 0
    while k < min(len(c), len(r)) and c[k] == r[k]:
        k += 1
    if c == r:
        problems.append(f"{where}: 'chosen' and 'rejected' are the same conversation; there is nothing to prefer")
        return None
    if k == 0:
        problems.append(f"{where}: 'chosen' and 'rejected' share no first message; add a 'prompt' field")
        return None
    replies = []
    for name, msgs in (("chosen", c[k:]), ("rejected", r[k:])):
        if not msgs or any(m["role"] != "assistant" for m in msgs):
            problems.append(f"{where}: field {name!r} must end with assistant message(s) after the shared ones")
            return None
        replies.append("\n\n".join(m["content"] for m in msgs))
    return c[:k], replies[0], replies[1]


def import_preferences(
    store: Store, path: Path, dry_run: bool = False, annotator_name: str = "imported"
) -> ImportResult:
    """Add each pair as prompt + two completions + a completed comparison (A = chosen) + one label.

    The label (choice A, strength from `margin`) belongs to an inactive system annotator
    `annotator_name`. Prompts are shared with existing ones of the same content. A pair imported
    before (same prompt, chosen and rejected text, any file) is skipped, so a re-import adds
    nothing. One transaction; `added` counts comparisons."""
    store.require_ready()
    path = Path(path)
    records = read_preferences(path)
    model, source = f"imported:{path.name}", f"imported:{path.name}"
    hashes = [content_hash(r.prompt.content) for r in records]
    if dry_run:
        with store.session() as s:
            new = _new_pairs(s, records, hashes)
        return _import_result(path, len(records), len(new), True)
    with store.transaction() as s:
        new = _new_pairs(s, records, hashes)
        if new:
            annotator = s.scalar(select(Annotator).where(Annotator.name == annotator_name))
            if annotator is not None and (annotator.active or annotator.token_hash is not None):
                raise WorkbenchError(
                    f"`annotator_name` {annotator_name!r} is a real annotator's name; imported labels need "
                    "a name of their own (e.g. 'imported')"
                )
            annotator = store.get_or_create_system_annotator(s, annotator_name)
            store._add_prompts(s, [records[i].prompt for i in new])
            prompts = _existing_prompts(s, [hashes[i] for i in new])
            completions = _completion_cache(s, [p.id for p in prompts.values()], model)
            # Three batched flushes (completions, comparisons, labels), not one per pair: an HH-size
            # file (160k pairs) would otherwise spend its time in round trips.
            pairs = []  # (record index, prompt id, chosen completion, rejected completion)
            for i in new:
                pid = prompts[hashes[i]].id
                chosen = _completion(s, completions, pid, records[i].chosen, model)
                rejected = _completion(s, completions, pid, records[i].rejected, model)
                pairs.append((i, pid, chosen, rejected))
            s.flush()
            comps = [
                Comparison(
                    prompt_id=pid,
                    completion_a_id=a.id,
                    completion_b_id=b.id,
                    status="completed",
                    required_labels=1,
                    source=source,
                )
                for _, pid, a, b in pairs
            ]
            s.add_all(comps)
            s.flush()
            s.add_all(
                Label(
                    comparison_id=c.id,
                    annotator_id=annotator.id,
                    choice="A",
                    strength=records[i].strength,
                    status="submitted",
                )
                for (i, _, _, _), c in zip(pairs, comps, strict=True)
            )
    return _import_result(path, len(records), len(new), False)


def _import_result(path: Path, read: int, added: int, dry_run: bool) -> ImportResult:
    log.info(
        "preferences from %s: %d read, %d added, %d already present%s",
        path,
        read,
        added,
        read - added,
        " (dry run)" if dry_run else "",
    )
    return ImportResult(read=read, added=added, already_present=read - added, dry_run=dry_run)


def _new_pairs(s: Session, records: list[PreferenceRecord], hashes: list[str]) -> list[int]:
    """Indices of the records whose (prompt, chosen, rejected) no earlier import stored."""
    prompts = _existing_prompts(s, hashes)
    ids = [p.id for p in prompts.values()]
    a, b = aliased(Completion), aliased(Completion)
    stored = set()
    for chunk in _chunks(ids, 500):
        q = (
            select(Comparison.prompt_id, a.text, b.text)
            .join(a, Comparison.completion_a_id == a.id)
            .join(b, Comparison.completion_b_id == b.id)
            .where(Comparison.prompt_id.in_(chunk), Comparison.source.like("imported:%"))
        )
        stored.update(tuple(r) for r in s.execute(q))
    return [
        i
        for i, (rec, h) in enumerate(zip(records, hashes, strict=True))
        if h not in prompts or (prompts[h].id, rec.chosen, rec.rejected) not in stored
    ]


def _completion_cache(s: Session, prompt_ids: list[int], model: str) -> dict[tuple[int, str], Completion]:
    """Completions this file imported before: the same text under the same prompt is stored once."""
    out = {}
    for chunk in _chunks(prompt_ids, 500):
        for c in s.scalars(select(Completion).where(Completion.prompt_id.in_(chunk), Completion.model == model)):
            out.setdefault((c.prompt_id, c.text), c)
    return out


def _completion(s: Session, cache: dict, prompt_id: int, text: str, model: str) -> Completion:
    c = cache.get((prompt_id, text))
    if c is None:
        c = Completion(prompt_id=prompt_id, text=text, model=model, settings={})
        s.add(c)
        cache[(prompt_id, text)] = c
    return c


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

DROP_REASONS = ("no_labels", "too_few_labels", "tie", "both_bad", "split_vote", "disagreement")


@dataclass(frozen=True)
class ExportOptions:
    test_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Share of prompts (not pairs) held out as the test split, 0 <= f < 1. Prompts are "
            "assigned by a hash of (seed, prompt), so no prompt is in both splits; a prompt's "
            "stored `split` always wins. 0: no prompt goes to test by hash."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the prompt-to-split hash: another seed, another split."})
    ties: str = field(
        default="drop",
        metadata={
            "help": "'drop' ties, or 'keep' them as A-over-B pairs with margin 0 and `is_tie` True "
            "(TRL's loss then still pushes A above B: keep only with a loss that reads `is_tie`)."
        },
    )
    both_bad: str = field(
        default="drop",
        metadata={"help": "'drop' 'both bad' verdicts, or 'keep' them like ties, flagged `is_both_bad`."},
    )
    disagreement: str = field(
        default="majority",
        metadata={
            "help": "'majority': the most voted choice wins, a tie between top choices is dropped "
            "(split_vote); 'unanimous': any disagreement drops the comparison."
        },
    )
    min_labels: int = field(
        default=1,
        metadata={
            "help": "Comparisons with fewer submitted labels are dropped (too_few_labels). Higher: "
            "cleaner pairs, fewer of them."
        },
    )
    margin: str = field(
        default="strength",
        metadata={
            "help": "'strength': margin = mean strength (0-3, Llama 2 scale) of the winning voters who "
            "gave one, 0 if none did, 0 for kept ties; 'none': no margin column (plain "
            "Bradley-Terry loss)."
        },
    )
    format: str = field(
        default="auto",
        metadata={
            "help": "'conversational': prompts as chat messages (plain ones as one user message), "
            "chosen/rejected as one assistant message; 'text': plain strings (refuses chat "
            "prompts); 'auto': conversational if any exported prompt is chat messages."
        },
    )
    rounds: list[int] | None = field(
        default=None, metadata={"help": "Only comparisons of these labeling rounds; None: all rounds."}
    )

    def problems(self) -> list[str]:
        p = []

        def one_of(name: str, allowed: tuple[str, ...]) -> None:
            if getattr(self, name) not in allowed:
                p.append(f"`{name}` must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

        tf = self.test_fraction
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 <= tf < 1:
            p.append(f"`test_fraction` must be a number with 0 <= test_fraction < 1, got {tf!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            p.append(f"`seed` must be a whole number, got {self.seed!r}")
        one_of("ties", ("drop", "keep"))
        one_of("both_bad", ("drop", "keep"))
        one_of("disagreement", ("majority", "unanimous"))
        ml = self.min_labels
        if isinstance(ml, bool) or not isinstance(ml, int) or ml < 1:
            p.append(f"`min_labels` must be a whole number >= 1, got {ml!r}")
        one_of("margin", ("strength", "none"))
        one_of("format", ("auto", "conversational", "text"))
        r = self.rounds
        if r is not None and (
            not isinstance(r, (list, tuple)) or not r or any(isinstance(x, bool) or not isinstance(x, int) for x in r)
        ):
            p.append(f"`rounds` must be a non-empty list of whole numbers or None, got {r!r}")
        return p


@dataclass
class ExportResult:
    path: Path
    counts: dict[str, Any]
    manifest: dict[str, Any]


def aggregate_labels(labels: list[Label], options: ExportOptions) -> tuple[dict[str, Any] | None, str | None]:
    """The verdict of one comparison's submitted labels: (verdict, None) or (None, drop reason).

    verdict = {choice: A/B/tie/both_bad, num_labels, agreement (share voting for choice), margin}."""
    votes = Counter(lb.choice for lb in labels)
    n = len(labels)
    if n == 0:
        return None, "no_labels"
    if n < options.min_labels:
        return None, "too_few_labels"
    if options.disagreement == "unanimous" and len(votes) > 1:
        return None, "disagreement"
    (choice, top), *rest = votes.most_common()
    if rest and rest[0][1] == top:
        return None, "split_vote"
    if {"tie": options.ties, "both_bad": options.both_bad}.get(choice) == "drop":
        return None, choice
    strengths = [lb.strength for lb in labels if lb.choice == choice and lb.strength is not None]
    margin = sum(strengths) / len(strengths) if strengths and choice in ("A", "B") else 0.0
    return {"choice": choice, "num_labels": n, "agreement": top / n, "margin": float(margin)}, None


def export_preferences(
    store: Store, out_dir: Path, options: ExportOptions = ExportOptions(), force: bool = False
) -> ExportResult:
    """Write the store's judged comparisons as a TRL preference DatasetDict + manifest.json (see module doc).

    Only submitted labels count. Refuses an existing non-empty `out_dir` unless `force` (then it is
    replaced whole); writes nothing when no pair survives the options."""
    problems = options.problems()
    if problems:
        raise ValidationError("export options", problems)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    store.require_ready()

    # 1) read the snapshot: comparisons in scope with their prompts, completions and labels.
    # Human-evaluation comparisons (source "evaluation:<run>", rlhf.human_eval) are never training data.
    evaluation = Comparison.source.like(f"{EVALUATION_PREFIX}%")
    with store.session() as s:
        q = (
            select(Comparison)
            .options(
                joinedload(Comparison.prompt),
                joinedload(Comparison.completion_a),
                joinedload(Comparison.completion_b),
                selectinload(Comparison.labels),
            )
            .where(or_(Comparison.source.is_(None), ~evaluation))
            .order_by(Comparison.id)
        )
        excluded = select(func.count()).select_from(Comparison).where(evaluation)
        if options.rounds is not None:
            q = q.where(Comparison.round.in_(list(options.rounds)))
            excluded = excluded.where(Comparison.round.in_(list(options.rounds)))
        comparisons = list(s.scalars(q).unique())
        n_evaluation = int(s.scalar(excluded) or 0)
        snapshot = _label_snapshot(s)

    # 2) aggregate each comparison's submitted labels into one pair, or a drop reason
    dropped = dict.fromkeys(DROP_REASONS, 0)
    kept = []
    for comp in comparisons:
        verdict, reason = aggregate_labels([lb for lb in comp.labels if lb.status == "submitted"], options)
        if verdict is None:
            dropped[reason] += 1
        else:
            kept.append((comp, verdict))
    if not kept:
        why = ", ".join(f"{k}={v}" for k, v in dropped.items() if v) or "the store holds no comparisons"
        scope = f" in rounds {list(options.rounds)}" if options.rounds is not None else ""
        raise WorkbenchError(
            f"nothing to export: 0 of {len(comparisons)} comparisons{scope} give a pair ({why}); "
            "label more comparisons or relax `min_labels` / `disagreement` / `ties` / `both_bad`"
        )

    # 3) format and split by prompt
    fmt = options.format
    if fmt == "auto":
        fmt = "conversational" if any(c.prompt.messages is not None for c, _ in kept) else "text"
    if fmt == "text":
        chat = sorted({c.prompt_id for c, _ in kept if c.prompt.messages is not None})
        if chat:
            raise WorkbenchError(
                f"`format` 'text' cannot hold chat-message prompts (prompt ids {chat[:10]}"
                f"{' ...' if len(chat) > 10 else ''}); use format 'conversational' or 'auto'"
            )
    splits = _assign_splits({c.prompt.content_hash: c.prompt.split for c, _ in kept}, options)
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for comp, verdict in kept:
        rows[splits[comp.prompt.content_hash]].append(_export_row(comp, verdict, fmt, options))
    if not rows["train"]:
        raise WorkbenchError(
            "nothing to train on: every exported prompt is stored with split 'test'; change the prompts' "
            "split or lower `test_fraction`"
        )

    # 4) write beside the target, then rename into place
    all_rows = rows["train"] + rows["test"]
    counts = {
        "comparisons_considered": len(comparisons),
        "exported_train": len(rows["train"]),
        "exported_test": len(rows["test"]),
        "dropped": dropped,
    }
    manifest = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workbench_version": __version__,
        "store_url": store.display_url,
        "format": fmt,
        "options": asdict(options),
        "counts": counts,
        "columns": list(all_rows[0]),
        "rows_sha256": rows_sha256(all_rows),
        "input": snapshot,
        "excluded_evaluation_comparisons": n_evaluation,  # human evaluation, never training data
    }
    _write_dataset(out_dir, {k: v for k, v in rows.items() if v}, fmt, options, manifest, force)
    log.info(
        "exported %d train / %d test pairs to %s (dropped %s)",
        counts["exported_train"],
        counts["exported_test"],
        out_dir,
        {k: v for k, v in dropped.items() if v},
    )
    return ExportResult(path=out_dir, counts=counts, manifest=manifest)


def rows_sha256(rows: list[dict[str, Any]]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of the rows, in order."""
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _label_snapshot(s: Session) -> dict[str, Any]:
    """What traces an export to the store state: label count, max id, and a hash of every label's verdict.

    The hash covers discarded labels and relabels too, which reuse a row and leave the max id alone."""
    h = hashlib.sha256()
    q = select(Label.id, Label.comparison_id, Label.annotator_id, Label.choice, Label.strength, Label.status)
    for row in s.execute(q.order_by(Label.id)):
        h.update(json.dumps(list(row)).encode() + b"\n")
    return {
        "max_label_id": s.scalar(select(func.max(Label.id))) or 0,
        "label_count": s.scalar(select(func.count()).select_from(Label).where(Label.status == "submitted")) or 0,
        "labels_sha256": h.hexdigest(),
    }


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise WorkbenchError(f"{out_dir} exists and is not a folder; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise WorkbenchError(f"{out_dir} exists and is not empty; choose another folder or pass force (--force)")


def _assign_splits(prompts: dict[str, str | None], options: ExportOptions) -> dict[str, str]:
    """content hash -> train/test. Stored split first; the rest by hash of (seed, content hash)."""

    def u(h: str) -> float:  # uniform in [0, 1), fixed per (seed, prompt)
        return int(hashlib.sha256(f"{options.seed}:{h}".encode()).hexdigest()[:16], 16) / 2**64

    by_hash = {h: u(h) for h, stored in prompts.items() if stored is None}
    out = {h: stored for h, stored in prompts.items() if stored is not None}
    out.update({h: "test" if x < options.test_fraction else "train" for h, x in by_hash.items()})
    if len(prompts) >= 2 and options.test_fraction > 0 and by_hash:
        # Keep both splits non-empty: move the hashed prompt nearest the boundary.
        if "test" not in out.values():
            out[min(by_hash, key=by_hash.get)] = "test"
        elif "train" not in out.values():
            out[max(by_hash, key=by_hash.get)] = "train"
    return out


def _export_row(comp: Comparison, verdict: dict[str, Any], fmt: str, options: ExportOptions) -> dict[str, Any]:
    side = "B" if verdict["choice"] == "B" else "A"  # ties and both-bad kept as A over B
    win, lose = (comp.completion_a, comp.completion_b) if side == "A" else (comp.completion_b, comp.completion_a)
    content = comp.prompt.content
    if fmt == "conversational":
        prompt = [{"role": "user", "content": content}] if isinstance(content, str) else content
        chosen = [{"role": "assistant", "content": win.text}]
        rejected = [{"role": "assistant", "content": lose.text}]
    else:
        prompt, chosen, rejected = content, _after(content, win.text), _after(content, lose.text)
    row: dict[str, Any] = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if options.margin == "strength":
        row["margin"] = verdict["margin"]
    row.update(
        comparison_id=comp.id,
        prompt_id=comp.prompt_id,
        num_labels=verdict["num_labels"],
        agreement=verdict["agreement"],
        category=comp.prompt.category or "",
        chosen_model=win.model,
        rejected_model=lose.model,
        is_tie=verdict["choice"] == "tie",
        is_both_bad=verdict["choice"] == "both_bad",
        chosen_side=side,
    )
    return row


def _after(prompt: str, completion: str) -> str:
    """A text completion as TRL will append it to the prompt: separated from it by whitespace."""
    if prompt[-1:].isspace() or completion[:1].isspace():
        return completion
    return TEXT_SEPARATOR + completion


def _features(fmt: str, options: ExportOptions) -> Any:
    from datasets import Features, List, Value

    msgs = List({"role": Value("string"), "content": Value("string")})
    text = msgs if fmt == "conversational" else Value("string")
    cols: dict[str, Any] = {"prompt": text, "chosen": text, "rejected": text}
    if options.margin == "strength":
        cols["margin"] = Value("float64")
    cols.update(
        comparison_id=Value("int64"),
        prompt_id=Value("int64"),
        num_labels=Value("int64"),
        agreement=Value("float64"),
        category=Value("string"),
        chosen_model=Value("string"),
        rejected_model=Value("string"),
        is_tie=Value("bool"),
        is_both_bad=Value("bool"),
        chosen_side=Value("string"),
    )
    return Features(cols)


def _write_dataset(
    out_dir: Path,
    rows: dict[str, list[dict[str, Any]]],
    fmt: str,
    options: ExportOptions,
    manifest: dict[str, Any],
    force: bool,
) -> None:
    import datasets
    from datasets import Dataset, DatasetDict

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{secrets.token_hex(4)}")
    try:
        features = _features(fmt, options)
        dd = DatasetDict({k: Dataset.from_list(v, features=features) for k, v in rows.items()})
        # save_to_disk draws a progress bar on stderr; the library logs and never prints.
        was_disabled = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            dd.save_to_disk(str(tmp))
        finally:
            if not was_disabled:
                datasets.enable_progress_bars()
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _check_out_dir(out_dir, force)  # again: another process may have written there meanwhile
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
        try:
            tmp.rename(out_dir)  # atomic on one filesystem: readers see the old folder or the new one
        except OSError:
            if old is not None:
                old.rename(out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
