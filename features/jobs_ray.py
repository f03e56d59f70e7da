"""`recsys features build --engine ray`: the behaviour jobs of `features.jobs`, partition by
partition on Ray tasks.

Every behaviour value depends on one key's events only (the premise of `features.jobs`' own
parts), except an item's `popularity_rank`, which ranks it among all items. So the driver
normalizes the log once, computes the last snapshot and the popularity ranks over all items
(`_popularity_ranks`: clicks x 7 rows), and cuts the keys into contiguous partitions of about
equal event counts (`ray.partitions_per_worker` per worker); each Ray task then runs the local
job's own code on its keys' events: `user_behaviour` for users, and the windowed counts plus
the global ranks for items. The rows are the local job's (same values; the file holds them in
another order of parts), written, registered and recorded as `build_features` does.

Feast 0.67's Ray offline store and compute engine run Feast transformations over a Ray
Dataset; ours are polars functions over the whole log, so plain Ray tasks serve them better.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime

import polars as pl

from features.definitions import (
    ITEM_BEHAVIOUR,
    USER_BEHAVIOUR,
    VIEWS,
    source_path,
    source_schema,
)
from features.jobs import (
    TS,
    BehaviourParams,
    BuildResult,
    _last_stamp,
    _popularity_ranks,
    _windowed_counts,
    _with_popularity_rank,
    _write_parts,
    content_and_apply,
    log_build,
    normalize_events,
    remove_temps,
    user_behaviour,
)
from recsys.config import Settings
from recsys.data import columns as C
from recsys.distributed.cluster import ray_session, worker_count
from recsys.io import atomic_path
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

log = logging.getLogger(__name__)


def key_partitions(events: pl.DataFrame, key: str, n: int) -> list[pl.DataFrame]:
    """`events` cut by `key` into at most `n` parts of about equal event counts (keys sorted,
    a key never split; parts in key order)."""
    weights = events.group_by(key).agg(n=pl.len()).sort(key)
    total = max(int(weights["n"].sum()), 1)
    weights = weights.select(key, part=((pl.col("n").cum_sum() - pl.col("n")) * n // total).cast(pl.Int32))
    tagged = events.join(weights, on=key, how="left")
    return [p.drop("part") for p in tagged.sort("part", maintain_order=True).partition_by("part",
                                                                                          maintain_order=True)]


def _user_part(events: pl.DataFrame, items: pl.DataFrame | None, params: BehaviourParams, last: datetime,
               threads: int) -> pl.DataFrame:
    configure_threads(threads)
    return user_behaviour(events, items, params, until=last)


def _item_part(events: pl.DataFrame, ranks: tuple[pl.DataFrame, pl.DataFrame], params: BehaviourParams,
               last: datetime, threads: int) -> pl.DataFrame:
    configure_threads(threads)
    frame = _with_popularity_rank(_windowed_counts(events, C.ITEM_ID, last, params), ranks)
    return frame.select(list(source_schema(ITEM_BEHAVIOUR))).sort(TS, C.ITEM_ID)


def behaviour_on_ray(settings: Settings, impressions: pl.DataFrame, items: pl.DataFrame | None,
                     until: datetime | None = None) -> dict[str, Iterator[pl.DataFrame]]:
    """The item and user behaviour sources as parts computed on Ray (needs an open session):
    view -> its parts in key order, each sorted by timestamp and key."""
    import ray

    params = BehaviourParams.from_settings(settings)
    events = normalize_events(impressions)
    last = _last_stamp(events, until)
    if last is None:
        return {ITEM_BEHAVIOUR: iter(()), USER_BEHAVIOUR: iter(())}
    n = worker_count(settings.ray) * settings.ray.partitions_per_worker
    task = ray.remote(num_cpus=1, max_retries=1)
    ranks = ray.put(_popularity_ranks(events, last))
    items_ref = ray.put(items)
    threads = settings.threads
    item_refs = [task(_item_part).remote(p, ranks, params, last, threads)
                 for p in key_partitions(events, C.ITEM_ID, n)]
    user_refs = [task(_user_part).remote(p, items_ref, params, last, threads)
                 for p in key_partitions(events, C.USER_ID, n)]

    def fetch(refs: list) -> Iterator[pl.DataFrame]:
        for ref in refs:  # in key order; the later ones keep running meanwhile
            yield ray.get(ref)

    return {ITEM_BEHAVIOUR: fetch(item_refs), USER_BEHAVIOUR: fetch(user_refs)}


def build_features_on_ray(settings: Settings, ws: Workspace | None = None,
                          until: datetime | None = None) -> BuildResult:
    """`features.jobs.build_features` with the behaviour jobs on Ray: the same sources, written
    whole (temp + rename), `feast apply`, and the MLflow run (`engine=ray` among its params)."""
    from recsys.data.tables import load_table

    ws = ws or Workspace.at(settings.home)
    start = time.perf_counter()
    remove_temps(ws, VIEWS, time.time(), stamp=False)
    params = BehaviourParams.from_settings(settings)
    impressions = load_table(ws, "impressions")
    items = load_table(ws, "items", columns=[C.ITEM_ID, C.CATEGORY]) if ws.table("items").exists() else None
    paths = {v: source_path(ws.feature_sources_dir, v) for v in (ITEM_BEHAVIOUR, USER_BEHAVIOUR)}
    with ray_session(settings.ray) as where:
        workers = worker_count(settings.ray)
        parts = behaviour_on_ray(settings, impressions, items, until)
        del impressions
        with (
            atomic_path(paths[ITEM_BEHAVIOUR], ".parquet") as item_tmp,
            atomic_path(paths[USER_BEHAVIOUR], ".parquet") as user_tmp,
        ):
            rows = {ITEM_BEHAVIOUR: _write_parts(parts[ITEM_BEHAVIOUR], item_tmp, ITEM_BEHAVIOUR)[0]}
            rows[USER_BEHAVIOUR], last = _write_parts(parts[USER_BEHAVIOUR], user_tmp, USER_BEHAVIOUR)
    notes = content_and_apply(settings, ws, paths)
    return log_build(settings, ws, params, until, rows, paths, last, start, notes,
                     {"engine": "ray", "ray": where, "ray_workers": workers})
