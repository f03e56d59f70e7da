"""Imports upsert by key and never shrink a stored table; every write keeps the previous version,
and a rollback brings it back."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import columns as C
from recsys.data import history
from recsys.data.contracts import ContractError
from recsys.data.tables import TooManyBadRows, import_file, load_table, save_table
from recsys.workspace import Workspace

ITEMS = "item_id,title,description,category\n" + "".join(
    f"i{n},Item {n},About item {n},thing\n" for n in range(10)
)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def titles(ws: Workspace) -> dict[str, str]:
    items = load_table(ws, "items")
    return dict(zip(items[C.ITEM_ID].to_list(), items[C.TITLE].to_list(), strict=True))


@pytest.fixture
def stocked(ws: Workspace, tmp_path: Path) -> Workspace:
    """A workspace with 10 items (version 1)."""
    import_file(ws, "items", write_text(tmp_path / "items.csv", ITEMS))
    return ws


def test_import_upserts_by_key(stocked: Workspace, tmp_path: Path) -> None:
    path = write_text(tmp_path / "more.csv", "item_id,title,description,category\n"
                      "i3,Item three renamed,About item 3,thing\nnew,New item,Brand new,thing\n")
    report = import_file(stocked, "items", path)
    assert (report.added, report.updated, report.stored) == (1, 1, 11), report.summary()
    got = titles(stocked)
    assert len(got) == 11 and got["i3"] == "Item three renamed" and got["new"] == "New item"
    assert got["i7"] == "Item 7"  # nothing else touched


def test_partly_bad_import_never_shrinks_the_stored_table(stocked: Workspace, tmp_path: Path) -> None:
    """The probe's case: a 3-row file with 2 bad rows. Refused above the bad share; with the share
    allowed, the good row is upserted and the other 10 items stay."""
    path = write_text(tmp_path / "bad.csv", "item_id,title,description,category,price\n"
                      "i1,Item one v2,About,thing,1\n,No id,About,thing,1\ni2,Item two,About,thing,-5\n")
    with pytest.raises(TooManyBadRows) as err:
        import_file(stocked, "items", path, max_bad_share=0.1)
    message = str(err.value)
    assert str(path) in message and "2 of 3 rows" in message and "--allow-partial" in message
    assert len(titles(stocked)) == 10 and titles(stocked)["i1"] == "Item 1"
    assert len(history.versions(stocked, "items")) == 1  # nothing was written
    assert len(list(stocked.quarantine_dir.glob("items-*.parquet"))) == 1  # bad rows kept to inspect

    report = import_file(stocked, "items", path, max_bad_share=None)  # --allow-partial
    assert report.kept == 1 and report.quarantined == 2 and report.stored == 10
    assert titles(stocked)["i1"] == "Item one v2" and titles(stocked)["i2"] == "Item 2"


def test_all_rows_bad_leaves_the_table(stocked: Workspace, tmp_path: Path) -> None:
    path = write_text(tmp_path / "bad.csv", "item_id,title,description,category,price\n,X,Y,Z,1\n")
    with pytest.raises(ContractError, match="left as it was"):
        import_file(stocked, "items", path)
    assert len(titles(stocked)) == 10


def test_replace_swaps_the_whole_table_and_rollback_restores_it(stocked: Workspace, tmp_path: Path) -> None:
    before = load_table(stocked, "items")
    path = write_text(tmp_path / "two.csv",
                      "item_id,title,description,category\na,A,About a,x\nb,B,About b,x\n")
    report = import_file(stocked, "items", path, replace=True)
    assert report.replaced and report.stored == 2 and set(titles(stocked)) == {"a", "b"}

    kept = history.versions(stocked, "items")
    assert [(v.version, v.rows, v.current) for v in kept] == [(1, 10, False), (2, 2, True)]
    restored = history.rollback(stocked, "items", 1)
    assert restored.rows == 10 and load_table(stocked, "items").equals(before)
    assert [v.version for v in history.versions(stocked, "items") if v.current] == [1]
    assert len(history.versions(stocked, "items")) == 2  # the replaced table stays too
    history.rollback(stocked, "items", 2)
    assert set(titles(stocked)) == {"a", "b"}
    with pytest.raises(LookupError, match="no version 9"):
        history.rollback(stocked, "items", 9)

    import_file(stocked, "items", path)  # the next write is the newest version
    assert max(v.version for v in history.versions(stocked, "items")) == 3


def test_history_adopts_an_untracked_table_and_keeps_the_last_versions(ws: Workspace) -> None:
    old = pl.DataFrame({C.USER_ID: ["u0", "u1"]})
    old.write_parquet(ws.table("users"))  # written before the history existed
    assert not history.live_is_tracked(ws, "users")
    for n in range(history.KEEP_VERSIONS + 2):
        save_table(ws, "users", pl.DataFrame({C.USER_ID: [f"u{i}" for i in range(n + 3)]}))
    kept = history.versions(ws, "users")
    assert len(kept) == history.KEEP_VERSIONS and kept[-1].current
    assert kept[-1].rows == history.KEEP_VERSIONS + 4
    assert sorted(p.name for p in ws.table_history("users").glob("v*.parquet")) == sorted(
        f"v{v.version}.parquet" for v in kept)
    history.rollback(ws, "users", kept[0].version)
    assert load_table(ws, "users").height == kept[0].rows


def test_a_failed_write_leaves_the_live_table(stocked: Workspace) -> None:
    before = load_table(stocked, "items")
    with pytest.raises(RuntimeError), history.new_version(stocked, "items") as path:
        pl.DataFrame({C.ITEM_ID: ["half"]}).write_parquet(path)
        raise RuntimeError("killed half way")
    assert load_table(stocked, "items").equals(before)
    save_table(stocked, "items", before.head(3))  # the stray file is neither listed nor overwritten
    kept = history.versions(stocked, "items")
    assert [v.rows for v in kept] == [10, 3] and kept[-1].version == 3


IMPRESSIONS = """request_id,user_id,item_id,position,event_timestamp,clicked,propensity,policy
r1,u1,i1,0,2024-01-01T00:00:00Z,false,0.5,p
r1,u1,i2,1,2024-01-01T00:00:00Z,false,0.5,p
r2,u2,i3,0,2024-01-02T00:00:00Z,true,1.0,p
"""


def test_impressions_are_an_append_log_keyed_by_slot(stocked: Workspace, tmp_path: Path) -> None:
    first = write_text(tmp_path / "log.csv", IMPRESSIONS)
    import_file(stocked, "impressions", first)
    again = import_file(stocked, "impressions", first)  # a re-import adds nothing
    assert (again.added, again.updated, again.stored) == (0, 3, 3)
    later = write_text(tmp_path / "log2.csv", IMPRESSIONS.splitlines()[0] + "\n"
                       "r1,u1,i2,1,2024-01-01T00:00:00Z,true,0.5,p\n"  # the click arrived late
                       "r3,u1,i4,0,2024-01-03T00:00:00Z,false,0.5,p\n")
    report = import_file(stocked, "impressions", later)
    assert (report.added, report.updated, report.stored) == (1, 1, 4)
    log = load_table(stocked, "impressions")
    assert log[C.EVENT_TIMESTAMP].is_sorted()
    late = log.filter((pl.col(C.REQUEST_ID) == "r1") & (pl.col(C.POSITION) == 1))
    assert late[C.CLICKED].to_list() == [True]

    clicks = write_text(tmp_path / "clicks.csv", "user_id,item_id,event_timestamp\n"
                        "u1,i5,2024-01-04T10:00:00Z\nu1,i5,2024-01-04T11:00:00Z\n")
    assert import_file(stocked, "impressions", clicks).added == 2
    report = import_file(stocked, "impressions", clicks)
    assert (report.added, report.updated, report.stored) == (0, 2, 6)


def test_image_paths_that_leave_the_files_folder_are_quarantined(ws: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    (folder / "pics").mkdir(parents=True)
    (folder / "pics" / "a.png").write_bytes(b"png")
    (tmp_path / "outside.png").write_bytes(b"png")
    path = write_text(folder / "items.csv", "item_id,title,description,category,image_uri\n"
                      "a,A,About a,x,pics/a.png\n"
                      "b,B,About b,x,../../../../etc/passwd\n"
                      "c,C,About c,x,pics/../../outside.png\n"
                      "d,D,About d,x,pics/./../pics/a.png\n")
    report = import_file(ws, "items", path)
    assert report.kept == 2 and report.quarantined == 2, report.summary()
    assert all("outside the file's folder" in r for r in report.reasons)
    items = load_table(ws, "items").sort(C.ITEM_ID)
    assert items[C.IMAGE_URI].to_list() == [str((folder / "pics" / "a.png").resolve())] * 2
