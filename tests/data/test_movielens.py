"""MovieLens import: ml-100k (the `ml100k` fixture of tests/conftest.py reads ../shared and skips when
absent) and a tiny ml-latest-small layout written here."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recsys.data import columns as C
from recsys.data.contracts import ContractError
from recsys.data.movielens import import_movielens
from recsys.data.tables import load_table
from recsys.workspace import Workspace


def test_ml100k_counts_and_contents(ml100k: Path, ws: Workspace) -> None:
    reports = import_movielens(ml100k, ws)
    assert [r.table for r in reports] == ["items", "users", "impressions"]
    assert all(r.quarantined == 0 for r in reports)
    items, users, clicks = (load_table(ws, t) for t in ("items", "users", "impressions"))
    assert (items.height, users.height, clicks.height) == (1682, 943, 100_000)
    assert clicks[C.CLICKED].all() and clicks[C.POSITION].null_count() == clicks.height
    assert clicks[C.PROPENSITY].null_count() == clicks.height and set(clicks[C.POLICY]) == {"movielens"}
    toy = items.filter(pl.col(C.ITEM_ID) == "1").row(0, named=True)
    assert toy[C.TITLE] == "Toy Story (1995)" and toy[C.CATEGORY] == "Animation"
    assert "Genres: Animation, Children's, Comedy." in toy[C.DESCRIPTION] and "Disney" in toy[C.DESCRIPTION]
    assert toy[C.PRICE] is None and toy[C.CREATED_AT].year == 1995
    poster = Path(toy[C.IMAGE_URI])
    assert poster.is_absolute() and poster.exists() and poster.is_relative_to(ml100k.resolve())
    assert items[C.IMAGE_URI].null_count() == 25  # 1,657 posters
    assert not any(ws.root.rglob("*.jpg"))  # posters are read in place, never copied
    assert {"age", "gender", "occupation"} <= set(users.columns) and users[C.CREATED_AT].null_count() == 0
    first = clicks.filter(pl.col(C.USER_ID) == "196").row(0, named=True)
    assert first[C.REQUEST_ID] == f"196:{first[C.EVENT_TIMESTAMP]:%Y-%m-%d}"


def test_ml100k_min_rating(ml100k: Path, ws: Workspace) -> None:
    import_movielens(ml100k, ws, min_rating=4)
    ratings = pl.read_csv(ml100k / "u.data", separator="\t", has_header=False)
    assert load_table(ws, "impressions").height == int((ratings.to_series(2) >= 4).sum())


MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"American President, The (1995)",Comedy|Drama|Romance
3,Some Short (2001),(no genres listed)
"""
RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,2.5,964981247
2,1,5.0,964982224
2,3,3.5,964983815
2,99,4.5,964983815
"""


def _latest(tmp_path: Path) -> Path:
    folder = tmp_path / "ml-latest-small"
    folder.mkdir(parents=True)
    (folder / "movies.csv").write_text(MOVIES)
    (folder / "ratings.csv").write_text(RATINGS)
    return folder


def test_ml_latest_small_layout(tmp_path: Path, ws: Workspace) -> None:
    reports = import_movielens(_latest(tmp_path), ws, min_rating=3.0)
    items, users, clicks = (load_table(ws, t) for t in ("items", "users", "impressions"))
    assert items.height == 3 and users.height == 2
    # 5 ratings, one below 3.0, one of an unknown movie (quarantined with its reason)
    assert clicks.height == 3 and reports[2].quarantined == 1
    assert any("item_id" in reason for reason in reports[2].reasons)
    pres = items.filter(pl.col(C.ITEM_ID) == "2").row(0, named=True)
    assert pres[C.TITLE] == "American President, The (1995)" and pres[C.CATEGORY] == "Comedy"
    assert pres[C.DESCRIPTION] == "American President, The (1995). Genres: Comedy, Drama, Romance."
    assert pres[C.CREATED_AT].year == 1995 and pres[C.IMAGE_SOURCE] == "none"
    assert items.filter(pl.col(C.ITEM_ID) == "3")[C.CATEGORY].item() == "unknown"
    with pytest.raises(ContractError, match="ratings.csv"):
        import_movielens(_latest(tmp_path / "strict"), Workspace.at(tmp_path / "ws2"), quarantine_bad=False)


def test_not_a_movielens_folder(tmp_path: Path, ws: Workspace) -> None:
    with pytest.raises(ContractError, match="not a MovieLens folder"):
        import_movielens(tmp_path, ws)
