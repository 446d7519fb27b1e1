"""Admin pages in-process: project (import, generate, settings), annotators, quality, data; roles."""

from __future__ import annotations

import json
import time

import pytest
from labeling_seed import APP, texts
from streamlit.testing.v1 import AppTest

ADMIN_PAGES = [
    "app_pages/project.py",
    "app_pages/annotators.py",
    "app_pages/quality.py",
    "app_pages/data.py",
    "app_pages/rounds.py",
]


@pytest.fixture
def admin(open_app, seeded):
    return open_app(seeded.admin_token)


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_navigation_offers_admin_pages_to_admins_only(open_app, seeded, page):
    annotator = open_app(seeded.annotator_tokens[0])
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        annotator.switch_page(page)  # not registered for this role: no URL reaches it
    visitor = open_app()
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        visitor.switch_page(page)


@pytest.mark.parametrize("page", ADMIN_PAGES)
@pytest.mark.parametrize("who", ["annotator", "visitor"])
def test_admin_pages_refuse_non_admins_themselves(seeded, page, who):
    # Defence in depth: each admin page checks the role even when run directly.
    at = AppTest.from_file(str(APP.parent / page), default_timeout=30)
    if who == "annotator":
        at.session_state["user_id"] = seeded.annotator_ids[0]
    at.run()
    assert not at.exception
    assert at.error[0].value == "This page is for admins only."
    assert not at.dataframe and not at.title and not at.metric  # nothing of the page rendered


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_admin_pages_render_for_admins(admin, page):
    admin.switch_page(page).run()
    assert not admin.exception, admin.exception
    assert not admin.error


def test_admin_can_label_too(admin):
    assert admin.session_state["item"] is not None


def test_project_import_prompts_upload(admin, store):
    admin.switch_page("app_pages/project.py").run()
    lines = [{"prompt": "Imported prompt one", "category": "advice"}, {"prompt": "Imported prompt two"}]
    data = "\n".join(json.dumps(x) for x in lines).encode()
    before = store.counts()["prompts"]
    admin.file_uploader(key="prompts_file").set_value(("new.jsonl", data, "application/jsonl"))
    admin.checkbox(key="prompts_dry").check()
    submit = next(b for b in admin.button if b.label == "Import prompts")
    submit.click().run()
    assert "would add 2 prompts" in admin.success[0].value
    assert store.counts()["prompts"] == before  # dry run wrote nothing
    admin.checkbox(key="prompts_dry").uncheck()
    next(b for b in admin.button if b.label == "Import prompts").click().run()
    assert "added 2 prompts" in admin.success[0].value
    assert store.counts()["prompts"] == before + 2


def test_project_import_rejects_bad_files_and_changes_nothing(admin, store):
    admin.switch_page("app_pages/project.py").run()
    before = store.counts()
    admin.file_uploader(key="prompts_file").set_value(("bad.jsonl", b'{"prompt": "ok"}\nnot json\n', "text/plain"))
    next(b for b in admin.button if b.label == "Import prompts").click().run()
    assert "bad.jsonl" in admin.error[0].value and "line 2" in admin.error[0].value
    admin.file_uploader(key="prompts_file").set_value(("bin.jsonl", b"\x00\x01\x02", "text/plain"))
    next(b for b in admin.button if b.label == "Import prompts").click().run()
    assert "binary" in admin.error[0].value
    assert store.counts() == before


def test_project_import_preferences(admin, store):
    admin.switch_page("app_pages/project.py").run()
    row = {"prompt": "Which is better?", "chosen": "A good answer.", "rejected": "A bad answer.", "margin": 2}
    admin.file_uploader(key="prefs_file").set_value(("prefs.jsonl", json.dumps(row).encode(), "text/plain"))
    next(b for b in admin.button if b.label == "Import preferences").click().run()
    assert not admin.error, admin.error
    assert "added 1 comparisons" in admin.success[0].value
    assert store.counts()["comparisons_completed"] == 1


def test_project_settings_overlap_and_guidelines(admin, store):
    admin.switch_page("app_pages/project.py").run()
    admin.number_input(key="overlap_input").set_value(3)
    admin.text_area(key="guidelines_input").input("Be **kind**. <script>x</script>")
    next(b for b in admin.button if b.label == "Save settings").click().run()
    assert store.get_setting("overlap") == 3
    assert store.get_setting("guidelines") == "Be **kind**. <script>x</script>"
    assert "Settings saved." in texts(admin)


def test_project_generation_runs_in_background_with_progress(admin, store, monkeypatch):
    import rlhf.generate as gen

    calls = {}

    def fake_generate(store_, model, settings, limit=None, category=None, required_labels=None, round=0,
                      progress=None, **_):  # fmt: skip
        calls.update(model=model, k=settings.num_candidates, limit=limit, required=required_labels, round=round)
        for i in range(3):
            progress(i, 3)
            time.sleep(0.3)
        progress(3, 3)
        return gen.GenerationReport(prompts=3, completions=6, comparisons=3, new_tokens=60, seconds=1.0)

    monkeypatch.setattr(gen, "generate_candidates", fake_generate)
    admin.switch_page("app_pages/project.py").run()
    next(b for b in admin.button if b.label == "Generate").click().run()
    assert calls["model"] == "default" and calls["k"] == 2 and calls["limit"] == 20
    assert any("Generating" in (p.proto.text or "") for p in admin.get("progress")) or "Done" in texts(admin)
    # The page stays usable while it runs: another tab works.
    next(b for b in admin.button if b.label == "Save settings").click().run()
    assert not admin.exception
    deadline = time.time() + 10
    while "Done (" not in texts(admin) and time.time() < deadline:
        time.sleep(0.3)
        admin.run()
    assert "3 prompts, 6 completions, 3 comparisons" in texts(admin)


def test_annotators_add_shows_token_once_and_it_works(admin, store):
    admin.switch_page("app_pages/annotators.py").run()
    admin.text_input(key="new_name").input("carol")
    next(b for b in admin.button if b.label == "Add annotator").click().run()
    assert not admin.exception
    token = admin.code[0].value
    assert "?token=" + token in admin.code[1].value
    carol = store.authenticate(token)
    assert carol is not None and carol.name == "carol" and carol.role == "annotator"
    next(b for b in admin.button if b.label == "Done, hide it").click().run()
    assert token not in texts(admin)
    # Duplicate names are refused with a message, nothing added.
    admin.text_input(key="new_name").input("carol")
    next(b for b in admin.button if b.label == "Add annotator").click().run()
    assert "already exists" in admin.error[0].value


def test_annotators_rotate_and_deactivate(admin, store, seeded):
    admin.switch_page("app_pages/annotators.py").run()
    admin.selectbox(key="manage_id").set_value(seeded.annotator_ids[0]).run()
    admin.button(key="rotate").click().run()
    new_token = admin.code[0].value
    assert store.authenticate(seeded.annotator_tokens[0]) is None
    assert store.authenticate(new_token).id == seeded.annotator_ids[0]
    admin.button(key="deactivate").click().run()
    assert store.authenticate(new_token) is None
    admin.button(key="reactivate").click().run()
    assert store.authenticate(new_token) is not None


def test_admin_cannot_deactivate_self(admin, seeded, store):
    admin.switch_page("app_pages/annotators.py").run()
    admin.selectbox(key="manage_id").set_value(seeded.admin_id).run()
    admin.button(key="deactivate").click().run()
    assert "cannot deactivate yourself" in admin.error[0].value
    assert store.get_annotator(seeded.admin_id).active


def test_annotator_stats_table(admin, store, seeded):
    a1, a2 = seeded.annotator_ids
    c1, c2, *_ = seeded.comparison_ids
    store.save_label(c1, a1, "tie", time_spent_s=4.0)
    store.save_label(c2, a1, "A", strength=1, time_spent_s=6.0, shown_left="A")
    admin.switch_page("app_pages/annotators.py").run()
    df = admin.dataframe[0].value
    row = df[df["name"] == "annotator1"].iloc[0]
    assert (row["labels"], row["median s/label"], row["tie rate"], row["picks left"]) == (2, 5.0, 0.5, 1.0)


def _overlap(store, seeded):
    # Both annotators label the first three items: agree on 1 and 2, disagree on 3.
    a1, a2 = seeded.annotator_ids
    c1, c2, c3, _ = seeded.comparison_ids
    for cid, x, y in ((c1, "A", "A"), (c2, "B", "B"), (c3, "A", "tie")):
        with store.transaction() as s:
            from rlhf.schema import Comparison

            s.get(Comparison, cid).required_labels = 2
        store.save_label(cid, a1, x)
        store.save_label(cid, a2, y)


def test_quality_without_overlap_explains_what_to_do(admin):
    admin.switch_page("app_pages/quality.py").run()
    assert "No comparison has two labels yet" in admin.info[0].value
    assert [m.value for m in admin.metric][1:] == ["n/a", "n/a", "n/a"]


def test_quality_with_overlap_shows_the_numbers(admin, store, seeded):
    _overlap(store, seeded)
    admin.switch_page("app_pages/quality.py").run()
    assert not admin.exception
    # 3 items, 2 of 3 pairs agree. Cohen: x = A,B,A; y = A,B,tie: p_o = 2/3,
    # p_e = (2*1 + 1*1 + 0*1)/9 = 1/3 -> kappa = (2/3 - 1/3) / (2/3) = 0.5.
    assert [m.value for m in admin.metric][:2] == ["3", "0.67"]
    pairs = admin.dataframe[0].value
    assert pairs.iloc[0]["kappa"] == pytest.approx(0.5)
    assert len(admin.get("vega_lite_chart")) >= 3  # kappa heatmap, per-category bars, choices


def test_data_browse_filter_and_detail(admin, store, seeded):
    store.save_label(seeded.comparison_ids[0], seeded.annotator_ids[0], "A", strength=2)
    admin.switch_page("app_pages/data.py").run()
    table = admin.dataframe[0].value
    assert list(table["comparison"]) == seeded.comparison_ids
    admin.selectbox(key="f_status").set_value("completed").run()
    assert list(admin.dataframe[0].value["comparison"]) == [seeded.comparison_ids[0]]
    labels = admin.dataframe[-1].value
    assert list(labels["annotator"]) == ["annotator1"]


def test_data_export_and_zip_download(admin, store, seeded, home):
    for cid in seeded.comparison_ids:
        store.save_label(cid, seeded.annotator_ids[0], "A", strength=2)
    admin.switch_page("app_pages/data.py").run()
    next(b for b in admin.button if b.label == "Export").click().run()
    assert not admin.error, admin.error[0].value
    out = home / "exports" / "preferences"
    assert (out / "manifest.json").exists()
    dl = admin.get("download_button")[0]
    assert dl.proto.label == "Download as zip"
    # Exporting again without "replace" is refused with a message, the folder untouched.
    next(b for b in admin.button if b.label == "Export").click().run()
    assert admin.error and "preferences" in admin.error[0].value
