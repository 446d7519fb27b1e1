"""The labeling page's session state and its button callbacks (writes happen here, in on_click).

Screen sides vs stored letters: the annotator sees "A" on the left and "B" on the right; which
stored completion (A or B) is on the left comes from `shown_left_for(annotator, comparison)`, and is
recorded on the label, so position bias can be measured. Session keys are set once with setdefault.
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from labeling_ui.components import USER_KEY, get_store
from rlhf.errors import WorkbenchError
from rlhf.schema import Comparison, Label
from rlhf.store import shown_left_for

# Keyboard shortcuts (Streamlit's native `shortcut=`; they are ignored while typing in a text box).
KEYS = {
    "left": "A",
    "right": "B",
    "tie": "T",
    "both_bad": "X",
    "strength": ("1", "2", "3", "4"),
    "submit": "Enter",
    "skip": "S",
    "undo": "U",
}
SHORTCUT_HELP = (
    "**Keys:** `A` / `B` left or right is better · `T` tie · `X` both bad · `1`-`4` strength · "
    "`Enter` submit · `S` skip · `U` undo last"
)
SIDES = ("left", "right", "tie", "both_bad")


def init_state() -> None:
    ss = st.session_state
    ss.setdefault("item", None)  # the Comparison on screen (prompt and completions loaded)
    ss.setdefault("item_shown_at", None)  # wall-clock time it appeared, for time_spent_s
    ss.setdefault("side", None)  # one of SIDES
    ss.setdefault("strength", None)  # 0..3
    ss.setdefault("rationale", "")
    ss.setdefault("skipped", [])  # comparison ids skipped this session
    ss.setdefault("undo_stack", [])  # label ids submitted this session, newest last
    ss.setdefault("flash", None)  # (kind, message) shown once on the next run
    ss.setdefault("queue_empty", False)


def _reset_choice() -> None:
    st.session_state.update(side=None, strength=None, rationale="")


def _show(item: Comparison | None) -> None:
    st.session_state.update(item=item, item_shown_at=time.time(), queue_empty=item is None)
    _reset_choice()


def load_next() -> None:
    ss = st.session_state
    _show(get_store().next_comparison(ss[USER_KEY], exclude=ss.skipped))


def ensure_item() -> Comparison | None:
    """The item on screen, fetching one when there is none (first visit, or after an empty queue)."""
    if st.session_state.item is None:
        load_next()
    return st.session_state.item


def stored_choice(side: str, shown_left: str) -> str:
    """Screen side -> stored letter (tie and both_bad are the same either way)."""
    if side == "left":
        return shown_left
    if side == "right":
        return "B" if shown_left == "A" else "A"
    return side


def screen_side(choice: str, shown_left: str | None) -> str:
    if choice in ("A", "B"):
        return "left" if choice == (shown_left or "A") else "right"
    return choice


# -- callbacks -----------------------------------------------------------------------------------


def choose(side: str) -> None:
    st.session_state.side = side
    if side in ("tie", "both_bad"):
        st.session_state.strength = None


def set_strength(value: int) -> None:
    st.session_state.strength = value
    if st.session_state.side not in ("left", "right"):
        st.session_state.flash = ("info", "Strength noted; now pick A or B (the better side).")


def submit() -> None:
    ss = st.session_state
    item: Comparison | None = ss.item
    if item is None:
        return
    if ss.side is None:
        ss.flash = ("warning", "Pick A, B, tie or both bad first.")
        return
    if ss.side in ("left", "right") and ss.strength is None:
        ss.flash = ("warning", "How much better? Pick a strength (keys 1-4).")
        return
    shown_left = shown_left_for(ss[USER_KEY], item.id)
    try:
        label = get_store().save_label(
            item.id,
            ss[USER_KEY],
            stored_choice(ss.side, shown_left),
            strength=ss.strength if ss.side in ("left", "right") else None,
            rationale=(ss.rationale or "").strip() or None,
            time_spent_s=round(max(0.0, time.time() - (ss.item_shown_at or time.time())), 3),
            shown_left=shown_left,
        )
    except WorkbenchError as e:
        ss.flash = ("error", str(e))
        return
    ss.undo_stack.append(label.id)
    ss.flash = ("success", f"Saved comparison #{item.id}.")
    load_next()


def skip() -> None:
    ss = st.session_state
    if ss.item is not None:
        ss.skipped.append(ss.item.id)
        ss.flash = ("info", f"Skipped comparison #{ss.item.id}; it stays in the queue for others.")
    load_next()


def revisit_skipped() -> None:
    st.session_state.skipped = []
    load_next()


def undo() -> None:
    """Discard the last submitted label and put its comparison back on screen, pre-filled."""
    ss = st.session_state
    store = get_store()
    label: Label | None = None
    while ss.undo_stack and label is None:
        candidate = store.get_label(ss.undo_stack.pop())
        label = candidate if candidate is not None and candidate.status == "submitted" else None
    if label is None:
        label = store.last_label(ss[USER_KEY])  # e.g. after a reload: the newest one in the store
    if label is None:
        ss.flash = ("info", "Nothing to undo.")
        return
    try:
        store.discard_label(label.id, ss[USER_KEY])
    except WorkbenchError as e:
        ss.flash = ("error", str(e))
        return
    _show(store.get_comparison(label.comparison_id))
    ss.update(
        side=screen_side(label.choice, label.shown_left),
        strength=label.strength,
        rationale=label.rationale or "",
    )
    ss.flash = (
        "info",
        f"Undone: your label on comparison #{label.comparison_id}. Change it and submit again.",
    )


def sides_of(item: Comparison) -> tuple[Any, Any]:
    """(left completion, right completion) as this annotator sees them."""
    if shown_left_for(st.session_state[USER_KEY], item.id) == "A":
        return item.completion_a, item.completion_b
    return item.completion_b, item.completion_a
