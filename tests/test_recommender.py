"""The two-stage Recommender (serving's and batch's code path) and `recsys recommend`."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from recsys.config import load_settings
from recsys.data import columns as C
from recsys.data.tables import save_table
from recsys.recommender import Recommender
from recsys.workspace import Workspace

_spec = importlib.util.spec_from_file_location("ranking_world",
                                               Path(__file__).parent / "ranking" / "conftest.py")
_world = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_world)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from training.ranker import train_ranker

    world = _world.make_world(seed=3)
    home = tmp_path_factory.mktemp("rec") / "ws"
    settings = load_settings(home=str(home), **{"ranker.rounds": 30, "ranker.candidates": 8,
                                                "retrieval.candidates": 25})
    ws = Workspace.at(settings.home)
    for name in ("items", "item_embeddings", "impressions"):
        save_table(ws, name, world[name])
    train_ranker(settings, ws, None, promote=True, retrieval_uri="clip-profile")
    return settings, ws, world


@pytest.fixture(scope="module")
def rec(trained) -> Recommender:
    return Recommender.load(trained[0])


def test_recommend_ranks_candidates_with_versions_and_timings(rec) -> None:
    out = rec.recommend("u1", 5, history=["i1", "i2", "i3"], as_of=datetime(2024, 2, 1, tzinfo=UTC))
    assert out.fallback is None and out.versions == {"ranker": "ranker/v1", "retrieval": "clip-profile"}
    assert [r for _, _, r in out.items] == [1, 2, 3, 4, 5]
    scores = [s for _, s, _ in out.items]
    assert scores == sorted(scores, reverse=True)
    assert not {"i1", "i2", "i3"} & {i for i, _, _ in out.items}  # recent clicks are never shown again
    assert {"retrieval", "features", "ranking", "total"} <= set(out.timings)
    assert out.candidates == 25


def test_exclusions_category_and_feast_history(rec) -> None:
    base = rec.recommend("u1", 10, history=["i1", "i2"])
    banned = {i for i, _, _ in base.items[:3]}
    again = rec.recommend("u1", 10, history=["i1", "i2"], exclude=banned)
    assert not banned & {i for i, _, _ in again.items}
    cat = rec.items.categories[0]
    only = rec.recommend("u1", 5, history=["i1", "i2"], category=cat)
    assert only.items and all(rec.items.categories[rec.items.category[rec.items.index[i]]] == cat
                              for i, _, _ in only.items)
    # Feast's last_clicked_items (most recent first) is the history when none is given
    via_feast = rec.recommend("u1", 10, user_features={"user_behaviour__last_clicked_items": ["i2", "i1"]})
    assert [i for i, _, _ in via_feast.items] == [i for i, _, _ in base.items]


def test_unknown_user_gets_popularity(rec) -> None:
    out = rec.recommend("stranger", 4, user_features={"user_behaviour__clicks_7d": None})
    assert out.fallback == "popularity" and len(out.items) == 4
    assert [s for _, s, _ in out.items] == sorted([s for _, s, _ in out.items], reverse=True)


def test_batch_cli_writes_topk_without_seen_items(trained, tmp_path) -> None:
    from recsys.cli import common, ranking

    settings, ws, world = trained
    app = typer.Typer()
    app.callback()(common.main_options)
    groups = {"train": typer.Typer()}
    app.add_typer(groups["train"], name="train")
    ranking.register(app, groups)
    users = tmp_path / "users.txt"
    users.write_text("u1\nu2\nstranger\n")
    out = tmp_path / "recs.parquet"
    res = CliRunner().invoke(app, ["--home", str(settings.home), "recommend", "--users", str(users),
                                   "--k", "5", "--out", str(out), "--as-of", "2024-01-10T00:00:00"])
    assert res.exit_code == 0, res.output
    df = pl.read_parquet(out)
    assert df.columns == [C.USER_ID, C.ITEM_ID, "rank", "score", "reason"]
    assert df["reason"].str.len_chars().min() > 0
    assert df.group_by(C.USER_ID).len()["len"].to_list() == [5, 5, 5]
    seen = world["impressions"].filter(pl.col(C.CLICKED) & (pl.col(C.EVENT_TIMESTAMP) < datetime(2024, 1, 10,
                                                                                                  tzinfo=UTC)))
    clash = df.join(seen.select(C.USER_ID, C.ITEM_ID), on=[C.USER_ID, C.ITEM_ID])
    assert clash.height == 0
    bad = CliRunner().invoke(app, ["--home", str(settings.home), "recommend", "--all", "--users", str(users),
                                   "--out", str(out)])
    assert bad.exit_code != 0


def test_ann_stage_one_matches_exact_search(rec) -> None:
    """An IVF index scanning every cell returns the exact top-N, so recommendations are identical."""
    fast = Recommender(rec.ranker, rec.items, rec.retrieval, rec.versions, n_candidates=rec.n_candidates,
                       history=rec.history, exact_below=0, seen=rec.seen_by_user)
    assert fast._ann is not None and rec._ann is None
    fast._ann.set_search_params(nprobe=fast._ann.params["nlist"])
    when = datetime(2024, 2, 1, tzinfo=UTC)
    cases = ((["i1", "i2", "i3"], set()), (["i5"], {"i7", "i9"}), (["i2", "i8", "i4", "i6"], {"i3"}))
    for hist, excl in cases:
        slow = rec.recommend("u1", 10, history=hist, exclude=excl, as_of=when)
        quick = fast.recommend("u1", 10, history=hist, exclude=excl, as_of=when)
        assert [i for i, _, _ in quick.items] == [i for i, _, _ in slow.items]
        assert [s for _, s, _ in quick.items] == pytest.approx([s for _, s, _ in slow.items], abs=1e-6)
        assert quick.candidates == slow.candidates
        assert not (set(hist) | excl) & {i for i, _, _ in quick.items}
    # a category filter takes the exact path
    cat = rec.items.categories[0]
    assert fast.recommend("u1", 5, history=["i1"], category=cat).items == \
        rec.recommend("u1", 5, history=["i1"], category=cat).items
