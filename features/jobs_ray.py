"""`recsys features build --engine ray`: the behaviour jobs of `features.jobs` on Ray actors,
which also read, cut and sort the log, so the driver's work does not grow with it.

Every behaviour value depends on one key's events only (the premise of `features.jobs`' own
parts), except an item's `popularity_rank`, which ranks it among all items. `ray.workers`
`BehaviourParts` actors run three rounds; the driver plans them, passes object references
(the data stays in Ray's object store) and writes the rows:

1. *cut*: each call reads some row groups of the impressions table, normalizes them
   (`normalize_events`) and cuts them into n buckets by a hash of the user and, apart, of the
   item (only the columns the item job reads), n from `partition_count`. Bucket j of every
   cut, in file order, is partition j: each key's events in one partition, in log order.
2. *count*: each item partition gives its `_rank_counts` (a few rows per day), which the driver
   sums into the popularity ranks (`_ranks_from_counts`: counts of disjoint sets of items add up);
3. *rows*: each user partition gives its `user_behaviour` rows and each item partition, with the
   ranks, its `item_behaviour` rows, piece by piece as the local job makes them (`_key_parts`).

The rows are the local job's (same values; the file holds them in another order of parts),
written, registered and recorded as `build_features` does. Rows come back as Ray streaming
generators, written in the order pieces are ready, at most `STREAMED_AHEAD` pieces ahead of the
driver's writing per call, so an actor holds its partition's events and a piece, the driver a
piece, and the object store the log's buckets and a few pieces (a 20-year log makes ~4 user rows
per event: whole partitions of rows did not fit in memory at 10M clicks).

Actors rather than tasks: the job runs on `ray.workers` processes (tasks would take every CPU
of the cluster), started first so that their start and imports overlap the driver's planning.

Feast 0.67's Ray offline store and compute engine run Feast transformations over a Ray
Dataset; ours are polars functions over the whole log, so plain Ray actors serve them better.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.definitions import (
    ITEM_BEHAVIOUR,
    USER_BEHAVIOUR,
    VIEWS,
    source_path,
)
from features.jobs import (
    DAY,
    PART_EVENT_DAYS,
    TS,
    BehaviourParams,
    BuildResult,
    _by_key,
    _floor_day,
    _rank_counts,
    _ranks_from_counts,
    _write_parts,
    content_and_apply,
    event_columns,
    log_build,
    normalize_events,
    ranked_item_parts,
    remove_temps,
    user_behaviour_parts,
)
from recsys.config import Settings
from recsys.data import columns as C
from recsys.distributed.cluster import ray_session, worker_count
from recsys.distributed.tasks import actors
from recsys.io import atomic_path
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
STREAMED_AHEAD = 2  # pieces of rows an actor may have made before the driver reads them
PIECE_EVENT_DAYS = 4 * PART_EVENT_DAYS  # (key, event day) pairs per piece: fewer, larger objects


def buckets(events: pl.DataFrame, key: str, n: int) -> list[pa.Table]:
    """`events` cut into `n` buckets by a hash of `key` (the same bucket for a key in every
    process of one polars version), each keeping the events' order."""
    hashed = events.with_columns((pl.col(key).hash(seed=0) % n).alias("_bucket"))
    parts = hashed.partition_by("_bucket", as_dict=True, include_key=False, maintain_order=True)
    return [parts.get((j,), events.clear()).to_arrow() for j in range(n)]


class BehaviourParts:
    """A Ray actor running the rounds of the feature build with the local job's code: one process
    per worker, which imports polars and the jobs once for all its calls. Frames travel as
    Arrow tables, which Ray ships and maps without re-encoding them."""

    def __init__(self, threads: int) -> None:
        configure_threads(threads)

    def cut(self, path: str, row_groups: list[int], columns: list[str], n: int) -> list[Any]:
        """-> [latest event time, n user buckets, n item buckets] (1 + 2n returns)."""
        events = normalize_events(pl.from_arrow(pq.ParquetFile(path).read_row_groups(row_groups, columns)))
        items = events.select(C.ITEM_ID, TS, C.CLICKED)  # an item's counts need only time and click
        return [events[TS].max(), *buckets(events, C.USER_ID, n), *buckets(items, C.ITEM_ID, n)]

    def users(self, items: pl.DataFrame | None, params: BehaviourParams, last: datetime,
              *parts: pa.Table) -> Iterator[pa.Table]:
        """The partition's `user_behaviour` rows, piece by piece (`user_behaviour_parts`)."""
        events = pl.from_arrow(pa.concat_tables(parts))
        for piece in user_behaviour_parts(events, items, params, until=last, max_event_days=PIECE_EVENT_DAYS):
            yield piece.to_arrow()

    def rank_counts(self, last: datetime, *parts: pa.Table) -> pa.Table:
        """The item partition's `_rank_counts` (a few rows per day)."""
        return _rank_counts(pl.from_arrow(pa.concat_tables(parts)), last).to_arrow()

    def items(self, ranks: tuple[pl.DataFrame, pl.DataFrame], params: BehaviourParams, last: datetime,
              *parts: pa.Table) -> Iterator[pa.Table]:
        """The item partition's `item_behaviour` rows, piece by piece, with the ranks over all
        items (`ranked_item_parts`)."""
        events = _by_key(pl.from_arrow(pa.concat_tables(parts)), C.ITEM_ID)
        for piece in ranked_item_parts(events, ranks, last, params, PIECE_EVENT_DAYS):
            yield piece.to_arrow()


def partition_count(settings: Settings, workers: int, events: int) -> int:
    """`ray.partitions_per_worker` per worker, or more where the log has over
    `ray.partition_events` events per partition."""
    return max(workers * settings.ray.partitions_per_worker, -(-events // settings.ray.partition_events))


def behaviour_on_ray(settings: Settings, ws: Workspace, items: pl.DataFrame | None, until: datetime | None,
                     workers: list, n: int) -> dict[str, Iterator[pl.DataFrame]]:
    """The user and item behaviour sources as parts computed by `workers` (`BehaviourParts`
    actors, in an open session) from the workspace's impressions table in `n` partitions: view ->
    its parts, each sorted by timestamp and key. Read the user parts first: the item parts are
    asked for when their iterator is first read, with the ranks the item counts made meanwhile."""
    import ray

    columns = event_columns(ws)
    path = ws.table("impressions")
    normalize_events(pl.read_parquet(path, columns=columns, n_rows=0))  # a wrong table, said before any read
    params = BehaviourParams.from_settings(settings)
    groups = np.arange(pq.ParquetFile(path).metadata.num_row_groups)
    cuts = [chunk.tolist() for chunk in np.array_split(groups, max(1, min(len(groups), n))) if len(chunk)]
    turn = itertools.cycle(workers)
    outs = [next(turn).cut.options(num_returns=1 + 2 * n).remote(str(path), rg, columns, n) for rg in cuts]
    tops = [t for t in ray.get([out[0] for out in outs]) if t is not None]
    if not tops:  # no events, no snapshots
        return {USER_BEHAVIOUR: iter(()), ITEM_BEHAVIOUR: iter(())}
    last = _floor_day(until) if until is not None else _floor_day(max(tops)) + DAY

    # partition j: bucket j of every cut, in file order; every call is sent now (an actor runs
    # its calls one after the other)
    user_parts = [[o[1 + j] for o in outs] for j in range(n)]
    item_parts = [[o[1 + n + j] for o in outs] for j in range(n)]
    del outs
    counts = [next(turn).rank_counts.remote(last, *item_parts[j]) for j in range(n)]
    items_ref = ray.put(items)
    streamed = {"_generator_backpressure_num_objects": STREAMED_AHEAD}
    users = [next(turn).users.options(**streamed).remote(items_ref, params, last, *user_parts[j])
             for j in range(n)]
    del user_parts

    def item_rows() -> Iterator[pl.DataFrame]:
        ranks = ray.put(_ranks_from_counts(pl.concat(pl.from_arrow(t) for t in ray.get(counts))))
        calls = [next(turn).items.options(**streamed).remote(ranks, params, last, *item_parts[j])
                 for j in range(n)]
        item_parts.clear()
        yield from _as_ready(calls)

    return {USER_BEHAVIOUR: _as_ready(users), ITEM_BEHAVIOUR: item_rows()}


def _as_ready(calls: list[Any]) -> Iterator[pl.DataFrame]:
    """The pieces of streamed calls (Ray's `ObjectRefGenerator`s) in the order they are ready,
    so no actor waits for the driver to reach its partition; each piece is let go once the
    caller has written it."""
    import ray

    active = list(calls)
    calls.clear()
    while active:
        ready, _ = ray.wait(active, num_returns=1)
        for gen in ready:
            try:
                ref = next(gen)
            except StopIteration:
                active.remove(gen)
                continue
            yield pl.from_arrow(ray.get(ref))


def build_features_on_ray(settings: Settings, ws: Workspace | None = None,
                          until: datetime | None = None) -> BuildResult:
    """`features.jobs.build_features` with the behaviour jobs on Ray: the same sources, written
    whole (temp + rename), `feast apply`, and the MLflow run (`engine=ray` among its params)."""
    from recsys.data.tables import load_table

    ws = ws or Workspace.at(settings.home)
    start = time.perf_counter()
    remove_temps(ws, VIEWS, time.time(), stamp=False)
    params = BehaviourParams.from_settings(settings)
    paths = {v: source_path(ws.feature_sources_dir, v) for v in (ITEM_BEHAVIOUR, USER_BEHAVIOUR)}
    with ray_session(settings.ray) as where, actors(BehaviourParts, worker_count(settings.ray),
                                                    settings.threads, restarts=1) as workers:
        items = (load_table(ws, "items", columns=[C.ITEM_ID, C.CATEGORY]) if ws.table("items").exists()
                 else None)
        log_file = ws.table("impressions")  # a missing one is said by `behaviour_on_ray`
        n = partition_count(settings, len(workers), pq.ParquetFile(log_file).metadata.num_rows
                            if log_file.exists() else 0)
        parts = behaviour_on_ray(settings, ws, items, until, workers, n)
        with (
            atomic_path(paths[ITEM_BEHAVIOUR], ".parquet") as item_tmp,
            atomic_path(paths[USER_BEHAVIOUR], ".parquet") as user_tmp,
        ):
            user_rows, last = _write_parts(parts[USER_BEHAVIOUR], user_tmp, USER_BEHAVIOUR)
            rows = {ITEM_BEHAVIOUR: _write_parts(parts[ITEM_BEHAVIOUR], item_tmp, ITEM_BEHAVIOUR)[0],
                    USER_BEHAVIOUR: user_rows}
    notes = content_and_apply(settings, ws, paths)
    return log_build(settings, ws, params, until, rows, paths, last, start, notes,
                     {"engine": "ray", "ray": where, "ray_workers": len(workers), "ray_partitions": n})
