"""Temp files a killed feature build or materialization left are removed at the next run's start."""

from __future__ import annotations

import os
import time

import polars as pl

from features.definitions import VIEWS, source_path
from features.jobs import MATERIALIZED_FILE, build_features, materialization_info, materialize
from features.online import OnlineFeatures


def test_stray_temps_of_a_killed_build_and_materialization_are_removed(settings, ws, stored_world) -> None:
    sources = ws.feature_sources_dir
    stray = [sources / f".{source_path(sources, v).name}.a1b2c3d4.parquet" for v in VIEWS]
    stray.append(ws.feast_dir / f".{MATERIALIZED_FILE}.x9y8z7w6.json")
    kept = [sources / "notes.parquet", sources / ".notes.parquet.a1b2c3d4.parquet",
            ws.feast_dir / "x.json.bak"]
    old = time.time() - 3600
    for path in (*stray, *kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        os.utime(path, (old, old))

    result = build_features(settings, ws)
    assert not [p for p in stray[:-1] if p.exists()], "the build removes its sources' temps"
    assert stray[-1].exists(), "the build writes no materialization stamp: not its temp"
    materialize(settings, ws, track=False)
    assert not stray[-1].exists()
    assert all(p.exists() for p in kept)
    assert result.rows["user_behaviour"] == pl.read_parquet(source_path(sources, "user_behaviour")).height > 0
    assert materialization_info(ws)["version"]
    assert OnlineFeatures(settings).user("u01")["user_behaviour__impressions_7d"] is not None
