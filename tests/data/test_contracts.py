"""Every bad-input case of the data contracts: the message names the file and the column, bad
rows go to quarantine with a reason, and no good row is lost."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import columns as C
from recsys.data.contracts import ContractError
from recsys.data.tables import import_file, load_table, read_raw
from recsys.workspace import Workspace


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


ITEMS = """item_id,title,description,category,price,image_uri,created_at
a,Red plate,A red plate,plate,12.5,,2024-01-01
b,Blue kite,A blue kite,kite,,,2024-01-02T10:00:00Z
c,Green ring,A green ring,ring,3,,
"""
IMPRESSIONS = """request_id,user_id,item_id,position,event_timestamp,clicked,propensity,policy
r1,u1,a,0,2024-01-01T00:00:00Z,true,0.5,p
r1,u1,b,1,2024-01-01 00:00:00,false,0.5,p
r2,u2,c,0,2024-01-02,1,1.0,p
"""


def _with_items(ws: Workspace, tmp_path: Path) -> None:
    import_file(ws, "items", write_text(tmp_path / "items.csv", ITEMS))


def _check_quarantined(ws: Workspace, table: str, path: Path, good: int, column: str) -> None:
    report = import_file(ws, table, path)
    assert report.kept == good and report.quarantined == 1, report.summary()
    assert load_table(ws, table).height == good
    q = pl.read_parquet(report.quarantine_file)
    assert report.quarantine_file.parent == ws.quarantine_dir
    assert report.quarantine_file.name.startswith(f"{table}-")
    assert q.height == 1 and column in q[C.REASON][0]
    assert q["source"][0] == str(path)
    # strict mode: the error names the file and the column, and nothing is stored
    strict_ws = Workspace.at(ws.root.parent / f"strict-{path.stem}")
    if table == "impressions":
        import_file(strict_ws, "items", write_text(path.parent / "items_strict.csv", ITEMS))
    with pytest.raises(ContractError) as err:
        import_file(strict_ws, table, path, quarantine_bad=False)
    assert str(path) in str(err.value) and column in str(err.value)
    assert not strict_ws.table(table).exists()


BAD_IMPRESSIONS = {
    "wrong type": ("r3,u3,a,first,2024-01-03,true,0.5,p", C.POSITION),
    "null id": ("r3,,a,0,2024-01-03,true,0.5,p", C.USER_ID),
    "duplicate key": ("r1,u1,c,0,2024-01-01,false,0.5,p", C.REQUEST_ID),
    "propensity zero": ("r3,u3,a,0,2024-01-03,true,0,p", C.PROPENSITY),
    "propensity above one": ("r3,u3,a,0,2024-01-03,true,1.5,p", C.PROPENSITY),
    "negative position": ("r3,u3,a,-1,2024-01-03,true,0.5,p", C.POSITION),
    "unknown item": ("r3,u3,zzz,0,2024-01-03,true,0.5,p", C.ITEM_ID),
    "unparseable timestamp": ("r3,u3,a,0,yesterday noon,true,0.5,p", C.EVENT_TIMESTAMP),
    "bad boolean": ("r3,u3,a,0,2024-01-03,maybe,0.5,p", C.CLICKED),
}


@pytest.mark.parametrize("case", list(BAD_IMPRESSIONS))
def test_bad_impression_rows_are_quarantined(case: str, ws: Workspace, tmp_path: Path) -> None:
    _with_items(ws, tmp_path)
    line, column = BAD_IMPRESSIONS[case]
    path = write_text(tmp_path / "impressions.csv", IMPRESSIONS + line + "\n")
    _check_quarantined(ws, "impressions", path, good=3, column=column)


BAD_ITEMS = {
    "null id": (",Thing,A thing,plate,1,,2024-01-01", C.ITEM_ID),
    "duplicate id": ("a,Again,A again,plate,1,,2024-01-01", C.ITEM_ID),
    "wrong type": ("d,Thing,A thing,plate,cheap,,2024-01-01", C.PRICE),
    "negative price": ("d,Thing,A thing,plate,-2,,2024-01-01", C.PRICE),
    "unparseable timestamp": ("d,Thing,A thing,plate,1,,31/31/2024", C.CREATED_AT),
}


@pytest.mark.parametrize("case", list(BAD_ITEMS))
def test_bad_item_rows_are_quarantined(case: str, ws: Workspace, tmp_path: Path) -> None:
    line, column = BAD_ITEMS[case]
    path = write_text(tmp_path / "items.csv", ITEMS + line + "\n")
    _check_quarantined(ws, "items", path, good=3, column=column)


def test_non_utf8_text_is_quarantined(ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "items.csv"
    path.write_bytes(ITEMS.encode() + "d,Caf\xe9 mug,A mug,plate,2,,2024-01-01\n".encode("latin-1"))
    _check_quarantined(ws, "items", path, good=3, column=C.TITLE)
    q = pl.read_parquet(next(ws.quarantine_dir.glob("items-*.parquet")))
    assert "UTF-8" in q[C.REASON][0]


def test_duplicate_user_is_quarantined(ws: Workspace, tmp_path: Path) -> None:
    path = write_text(
        tmp_path / "users.csv", "user_id,created_at,country\nu1,2024-01-01,FR\nu2,,DE\nu1,2024-02-01,IT\n"
    )
    _check_quarantined(ws, "users", path, good=2, column=C.USER_ID)
    assert load_table(ws, "users")["country"].to_list() == ["FR", "DE"]  # attributes travel along


@pytest.mark.parametrize("table", ["items", "users", "impressions"])
def test_missing_column_names_file_and_column(table: str, ws: Workspace, tmp_path: Path) -> None:
    text = {"items": ITEMS, "users": "user_id,created_at\nu1,2024-01-01\n", "impressions": IMPRESSIONS}[table]
    header, *rows = text.splitlines()
    cols = header.split(",")
    drop = {"items": C.TITLE, "users": C.USER_ID, "impressions": C.CLICKED}[table]
    keep = [i for i, c in enumerate(cols) if c != drop]
    body = "\n".join(",".join(r.split(",")[i] for i in keep) for r in [header, *rows]) + "\n"
    path = write_text(tmp_path / f"{table}.csv", body)
    with pytest.raises(ContractError) as err:
        import_file(ws, table, path)
    assert str(path) in str(err.value) and drop in str(err.value)
    assert not ws.table(table).exists()


@pytest.mark.parametrize("content", ["", "item_id,title,description,category\n"])
def test_empty_file(content: str, ws: Workspace, tmp_path: Path) -> None:
    path = write_text(tmp_path / "items.csv", content)
    with pytest.raises(ContractError, match="empty") as err:
        import_file(ws, "items", path)
    assert str(path) in str(err.value)


def test_missing_image_path_keeps_the_item(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"png")
    text = ITEMS.replace("12.5,,", "12.5,pics/a.png,").replace(
        "A blue kite,kite,,,", "A blue kite,kite,,pics/nope.png,"
    )
    path = write_text(tmp_path / "items.csv", text)
    report = import_file(ws, "items", path)
    assert report.kept == 3 and report.quarantined == 0
    assert any(str(path) in n and C.IMAGE_URI in n and "nope.png" in n for n in report.notes)
    items = load_table(ws, "items").sort(C.ITEM_ID)
    assert items[C.IMAGE_URI].to_list() == [str((tmp_path / "pics" / "a.png").resolve()), None, None]
    assert items[C.IMAGE_SOURCE].to_list() == ["original", "none", "none"]


def test_good_rows_in_mixed_formats_all_survive(ws: Workspace, tmp_path: Path) -> None:
    _with_items(ws, tmp_path)
    extra = (
        "r3,u3,a,2.0,1704067200,TRUE,0.25,p\n"  # float-looking position, unix seconds
        "r4,u3,b,0,2024-01-01T05:00:00+02:00,no,0.25,\n"
    )  # offset, no policy
    path = write_text(tmp_path / "impressions.csv", IMPRESSIONS + extra)
    report = import_file(ws, "impressions", path, quarantine_bad=False)
    assert report.kept == 5
    df = load_table(ws, "impressions").sort(C.REQUEST_ID, C.POSITION)
    assert df.schema[C.EVENT_TIMESTAMP] == pl.Datetime("us", "UTC")
    assert df.schema[C.POSITION] == pl.Int32
    assert df[C.EVENT_TIMESTAMP].dt.hour().to_list() == [0, 0, 0, 0, 3]
    assert df[C.POLICY].to_list()[-1] == "unknown"


def test_click_only_log(ws: Workspace, tmp_path: Path) -> None:
    _with_items(ws, tmp_path)
    path = write_text(
        tmp_path / "clicks.csv",
        "user_id,item_id,event_timestamp\nu1,a,2024-01-01 10:00\nu1,b,2024-01-01 11:00\nu2,c,2024-01-02\n",
    )
    report = import_file(ws, "impressions", path)
    df = load_table(ws, "impressions")
    assert report.kept == 3 and df[C.CLICKED].all() and df[C.POSITION].null_count() == 3
    assert sorted(df[C.REQUEST_ID].unique().to_list()) == ["u1:2024-01-01", "u2:2024-01-02"]


def test_parquet_input_with_wrong_types(ws: Workspace, tmp_path: Path) -> None:
    _with_items(ws, tmp_path)
    df = pl.read_csv(IMPRESSIONS.encode(), infer_schema=False)
    df = pl.concat(
        [df, df.head(1).with_columns(pl.lit("r9").alias(C.REQUEST_ID), pl.lit("x").alias(C.POSITION))]
    )
    path = tmp_path / "impressions.parquet"
    df.write_parquet(path)
    assert read_raw(path).height == 4
    _check_quarantined(ws, "impressions", path, good=3, column=C.POSITION)


def test_a_file_with_no_good_row_leaves_the_stored_table_as_it_was(ws: Workspace, tmp_path: Path) -> None:
    _with_items(ws, tmp_path)
    before = load_table(ws, "items")
    rows = "item_id,title,description,category,price\n,A,d,c,1\nx,B,d,c,no\n"
    bad = write_text(tmp_path / "bad_items.csv", rows)
    with pytest.raises(ContractError, match=r"bad_items\.csv.*no row.*left as it was"):
        import_file(ws, "items", bad)
    assert load_table(ws, "items").equals(before)
    assert len(list(ws.quarantine_dir.glob("items-*.parquet"))) == 1  # the bad rows are kept to inspect


def test_availability_is_optional_and_updated_by_an_import(ws: Workspace, tmp_path: Path) -> None:
    _with_items(ws, tmp_path)  # no `available` column: every item is in stock
    assert load_table(ws, "items").sort(C.ITEM_ID)[C.AVAILABLE].to_list() == [True, True, True]
    stock = ITEMS.replace("item_id,title,description,category,price,image_uri,created_at",
                          "item_id,title,description,category,price,image_uri,created_at,available")
    stock = stock.replace("2024-01-01\n", "2024-01-01,no\n").replace("10:00:00Z\n", "10:00:00Z,\n")
    stock = stock.replace("3,,\n", "3,,,1\n") + "d,Odd sock,An odd sock,sock,1,,,maybe\n"
    report = import_file(ws, "items", write_text(tmp_path / "stock.csv", stock))
    assert report.updated == 3 and report.quarantined == 1  # "maybe" is no boolean: quarantined
    items = load_table(ws, "items").sort(C.ITEM_ID)
    assert items[C.AVAILABLE].to_list() == [False, True, True]  # empty means in stock
