"""Quality (admins): inter-annotator agreement on overlapped items, overall, per pair, per category."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from labeling_ui.components import fmt, require_admin, store_or_stop
from rlhf.agreement import agreement_by_category, agreement_report, annotator_stats

require_admin()
store = store_or_stop()
st.title("Quality")

rows = store.label_rows()
report = agreement_report(rows)

c = st.columns(4)
c[0].metric("Overlapped items", report.n_items, help="Comparisons with two or more submitted labels")
c[1].metric("Raw agreement", fmt(report.pairwise), help="Share of agreeing pairs of labels on the same item")
c[2].metric("Fleiss' κ", fmt(report.fleiss), help="Chance-corrected agreement across all annotators")
c[3].metric("Krippendorff's α", fmt(report.alpha), help="Nominal; allows missing labels and any number of annotators")
st.caption(
    "Reading κ / α (Landis & Koch): < 0 poor, 0-0.2 slight, 0.2-0.4 fair, 0.4-0.6 moderate, "
    "0.6-0.8 substantial, > 0.8 almost perfect. Human preference data typically lands at 0.3-0.6; "
    "n/a means undefined (no overlap yet, or everyone gave the same answer)."
)
if report.n_items == 0:
    st.info(
        "No comparison has two labels yet. Set overlap to 2 or more on the Project page (it applies to "
        "new comparisons) and let several annotators label."
    )

# -- pairs of annotators -------------------------------------------------------------------------------
if report.pairs:
    st.subheader("Cohen's κ per pair of annotators")
    pairs = pd.DataFrame(
        [
            {
                "annotator 1": str(p.annotator_a),
                "annotator 2": str(p.annotator_b),
                "shared items": p.n_items,
                "agreement": p.agreement,
                "kappa": p.kappa,
            }
            for p in report.pairs
        ]
    )
    left, right = st.columns([1, 1])
    left.dataframe(
        pairs,
        hide_index=True,
        column_config={
            "agreement": st.column_config.NumberColumn(format="percent"),
            "kappa": st.column_config.NumberColumn(format="%.2f"),
        },
    )
    both = pd.concat([pairs, pairs.rename(columns={"annotator 1": "annotator 2", "annotator 2": "annotator 1"})])
    heat = (
        alt.Chart(both)
        .mark_rect()
        .encode(
            x=alt.X("annotator 1:N", title=None),
            y=alt.Y("annotator 2:N", title=None),
            color=alt.Color("kappa:Q", scale=alt.Scale(domain=[-1, 1], scheme="redblue"), title="κ"),
            tooltip=["annotator 1", "annotator 2", "shared items", alt.Tooltip("kappa:Q", format=".2f")],
        )
        .properties(height=280)
    )
    right.altair_chart(heat, width="stretch")

# -- per category ---------------------------------------------------------------------------------------
by_cat = agreement_by_category(rows)
cat_rows = [
    {"category": cat, **{k: v for k, v in rep.as_dict().items() if k != "annotators"}} for cat, rep in by_cat.items()
]
if cat_rows:
    st.subheader("Per category")
    cats = pd.DataFrame(cat_rows)
    left, right = st.columns([1, 1])
    left.dataframe(
        cats,
        hide_index=True,
        column_config={
            "pairwise_agreement": st.column_config.NumberColumn("agreement", format="percent"),
            "fleiss_kappa": st.column_config.NumberColumn("Fleiss κ", format="%.2f"),
            "krippendorff_alpha": st.column_config.NumberColumn("Krippendorff α", format="%.2f"),
        },
    )
    plotted = cats.dropna(subset=["krippendorff_alpha"])
    if not plotted.empty:
        bars = (
            alt.Chart(plotted)
            .mark_bar()
            .encode(
                x=alt.X("krippendorff_alpha:Q", title="Krippendorff's α", scale=alt.Scale(domain=[-1, 1])),
                y=alt.Y("category:N", sort="-x", title=None),
                tooltip=["category", "items", alt.Tooltip("krippendorff_alpha:Q", format=".2f")],
            )
        )
        right.altair_chart(bars, width="stretch")

# -- how each annotator chooses -------------------------------------------------------------------------
if rows:
    st.subheader("Choices and position bias per annotator")
    left, right = st.columns([1, 1])
    choices = pd.DataFrame([{"annotator": r.annotator, "choice": r.choice} for r in rows])
    left.altair_chart(
        alt.Chart(choices)
        .mark_bar()
        .encode(
            x=alt.X("count():Q", stack="normalize", title="share of labels"),
            y=alt.Y("annotator:N", title=None),
            color=alt.Color("choice:N", sort=["A", "B", "tie", "both_bad"]),
            tooltip=["annotator", "choice", "count()"],
        ),
        width="stretch",
    )
    bias = pd.DataFrame(
        [
            {
                "annotator": s.annotator,
                "picks left": s.left_rate,
                "A/B choices": s.ab_choices,
                "p": s.left_bias_p,
            }
            for s in annotator_stats(rows)
            if s.left_rate is not None
        ]
    )
    if not bias.empty:
        base = alt.Chart(bias)
        right.altair_chart(
            base.mark_bar().encode(
                x=alt.X("picks left:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
                y=alt.Y("annotator:N", title=None),
                tooltip=[
                    "annotator",
                    "A/B choices",
                    alt.Tooltip("picks left:Q", format=".0%"),
                    alt.Tooltip("p:Q", format=".3f"),
                ],
            )
            + base.mark_rule(color="gray", strokeDash=[4, 4]).encode(x=alt.datum(0.5)),
            width="stretch",
        )
    st.caption(f"{len(rows)} submitted labels; {report.n_labels} of them on overlapped items.")
