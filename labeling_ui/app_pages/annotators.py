"""Annotators (admins): add, deactivate, rotate tokens; per-annotator statistics."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from labeling_ui.components import require_admin, store_or_stop
from rlhf.agreement import annotator_stats
from rlhf.errors import WorkbenchError
from rlhf.schema import ROLES

admin = require_admin()
store = store_or_stop()
st.title("Annotators")


def login_link(token: str) -> str:
    base = (st.context.url or "").split("?")[0].rstrip("/")
    for suffix in ("/annotators",):
        base = base.removesuffix(suffix)
    return f"{base}/?token={token}"


def show_token_once() -> None:
    """The token exists in this session only until it is dismissed: the store keeps its hash only."""
    if shown := st.session_state.get("new_token"):
        name, token = shown
        with st.container(border=True):
            st.success(f"Token for {name}: copy it now, it is not shown again.")
            st.code(token, language=None)
            st.caption("Login link:")
            st.code(login_link(token), language=None)
            st.button("Done, hide it", on_click=lambda: st.session_state.pop("new_token", None))


def add_annotator() -> None:
    try:
        a, token = store.add_annotator(st.session_state.new_name, st.session_state.new_role)
    except WorkbenchError as e:
        st.session_state["annotators_error"] = str(e)
        return
    st.session_state.new_token = (a.name, token)
    st.session_state.new_name = ""


def rotate(annotator_id: int, name: str) -> None:
    st.session_state.new_token = (name, store.rotate_token(annotator_id))


def set_active(annotator_id: int, active: bool) -> None:
    if annotator_id == admin.id and not active:
        st.session_state["annotators_error"] = "You cannot deactivate yourself; ask another admin."
        return
    store.set_annotator_active(annotator_id, active)
    if not active:
        store.release_comparison(annotator_id)


with st.form("add_annotator", clear_on_submit=False):
    c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
    c1.text_input("Name", key="new_name", max_chars=100)
    c2.selectbox("Role", ROLES, key="new_role")
    c3.form_submit_button("Add annotator", type="primary", on_click=add_annotator)
if err := st.session_state.pop("annotators_error", None):
    st.error(err)
show_token_once()

# -- table with statistics --------------------------------------------------------------------------
people = [a for a in store.list_annotators() if a.token_hash is not None or a.active]  # hides `imported`
stats = {s.annotator: s for s in annotator_stats(store.label_rows())}
rows = []
for a in people:
    s = stats.get(a.name)
    rows.append(
        {
            "id": a.id,
            "name": a.name,
            "role": a.role,
            "active": a.active,
            "labels": s.labels if s else 0,
            "median s/label": s.median_time_s if s else None,
            "agrees w/ majority": s.majority_agreement if s else None,
            "majority items": s.majority_items if s else 0,
            "tie rate": s.tie_rate if s else None,
            "both-bad rate": s.both_bad_rate if s else None,
            "picks left": s.left_rate if s else None,
            "left-bias p": s.left_bias_p if s else None,
        }
    )
st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    column_config={
        "median s/label": st.column_config.NumberColumn(format="%.1f"),
        "agrees w/ majority": st.column_config.NumberColumn(format="percent"),
        "tie rate": st.column_config.NumberColumn(format="percent"),
        "both-bad rate": st.column_config.NumberColumn(format="percent"),
        "picks left": st.column_config.NumberColumn(
            format="percent", help="Share of A/B choices that picked the left side; 50% = no position bias"
        ),
        "left-bias p": st.column_config.NumberColumn(
            format="%.3f", help="Exact binomial test against 50%; small (< 0.05) suggests position bias"
        ),
    },
)
st.caption(
    "Agreement with the majority: on items where the other annotators' most frequent choice is "
    "unique, the share where this annotator chose the same."
)

# -- actions ------------------------------------------------------------------------------------------
if people:
    st.subheader("Manage")
    by_id = {a.id: a for a in people}
    chosen = st.selectbox(
        "Annotator", list(by_id), format_func=lambda i: f"{by_id[i].name} ({by_id[i].role})", key="manage_id"
    )
    a = by_id[chosen]
    c1, c2 = st.columns(2)
    c1.button(
        "Rotate token",
        on_click=rotate,
        args=(a.id, a.name),
        help="The old token stops working at once.",
        key="rotate",
    )
    if a.active:
        c2.button("Deactivate", on_click=set_active, args=(a.id, False), key="deactivate")
    else:
        c2.button("Reactivate", on_click=set_active, args=(a.id, True), key="reactivate")
