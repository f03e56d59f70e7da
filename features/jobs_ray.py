"""`recsys features build --engine ray`: the behaviour jobs of `features.jobs` on Ray actors,
which also read, cut and sort the log and write the rows, so the driver's work grows with
neither.

Every behaviour value depends on one key's events only (the premise of `features.jobs`' own
parts), except an item's `popularity_rank`, which ranks it among all items. `ray.workers`
`BehaviourParts` actors run three rounds; the driver plans them and passes object references
(the data stays in Ray's object store):

1. *cut*: each call reads some row groups of the impressions table, normalizes them
   (`normalize_events`) and cuts them into n buckets by a hash of the user and, apart, of the
   item (only the columns the item job reads), n from `partition_count`. Bucket j of every
   cut, in file order, is partition j: each key's events in one partition, in log order.
2. *count*: each item partition gives its `_rank_counts` (a few rows per day), which the driver
   sums into the popularity ranks (`_ranks_from_counts`: counts of disjoint sets of items add up);
3. *rows*: each user partition writes its `user_behaviour` rows and each item partition, with
   the ranks, its `item_behaviour` rows, piece by piece as the local job makes them
   (`_key_parts`), to a parquet file of its own: part j of the view's folder.

The rows are the local job's (same values, in the parts of a folder rather than one file;
polars, pyarrow and Feast's duckdb read either), registered and recorded as `build_features`
does; each view's folder replaces its source at once (`atomic_folder`). No row passes through
the driver or the object store: an actor holds its partition's events and a piece (a 20-year
log makes ~4 user rows per event: whole partitions of rows did not fit in memory at 10M
clicks), and the driver, which received and encoded every row before (1.7 of its 4.3 CPU s at
8M events, on the cores the workers needed), now waits. The workers need the workspace on
shared storage, as every Ray job here does.

Actors rather than tasks: the job runs on `ray.workers` processes (tasks would take every CPU
of the cluster), started first so that their start and imports overlap the driver's planning.

Feast 0.67's Ray offline store and compute engine run Feast transformations over a Ray
Dataset; ours are polars functions over the whole log, so plain Ray actors serve them better.
"""

from __future__ import annotations

import itertools
import logging
import time
from datetime import datetime
from pathlib import Path
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
from recsys.io import atomic_folder
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
PIECE_EVENT_DAYS = 4 * PART_EVENT_DAYS  # (key, event day) pairs per piece: fewer, larger row groups


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

    def users(self, out: Path, items: pl.DataFrame | None, params: BehaviourParams, last: datetime,
              *parts: pa.Table) -> tuple[int, datetime | None]:
        """Write the partition's `user_behaviour` rows to `out`, piece by piece
        (`user_behaviour_parts`): (rows, latest timestamp)."""
        events = pl.from_arrow(pa.concat_tables(parts))
        pieces = user_behaviour_parts(events, items, params, until=last, max_event_days=PIECE_EVENT_DAYS)
        return _write_parts(pieces, out, USER_BEHAVIOUR)

    def rank_counts(self, last: datetime, *parts: pa.Table) -> pa.Table:
        """The item partition's `_rank_counts` (a few rows per day)."""
        return _rank_counts(pl.from_arrow(pa.concat_tables(parts)), last).to_arrow()

    def items(self, out: Path, ranks: tuple[pl.DataFrame, pl.DataFrame], params: BehaviourParams,
              last: datetime, *parts: pa.Table) -> tuple[int, datetime | None]:
        """Write the item partition's `item_behaviour` rows to `out`, piece by piece, with the
        ranks over all items (`ranked_item_parts`): (rows, latest timestamp)."""
        events = _by_key(pl.from_arrow(pa.concat_tables(parts)), C.ITEM_ID)
        pieces = ranked_item_parts(events, ranks, last, params, PIECE_EVENT_DAYS)
        return _write_parts(pieces, out, ITEM_BEHAVIOUR)


def partition_count(settings: Settings, workers: int, events: int) -> int:
    """`ray.partitions_per_worker` per worker, or more where the log has over
    `ray.partition_events` events per partition."""
    return max(workers * settings.ray.partitions_per_worker, -(-events // settings.ray.partition_events))


def behaviour_on_ray(settings: Settings, ws: Workspace, items: pl.DataFrame | None, until: datetime | None,
                     workers: list, n: int,
                     folders: dict[str, Path]) -> dict[str, tuple[int, datetime | None]]:
    """The user and item behaviour sources computed by `workers` (`BehaviourParts` actors, in an
    open session) from the workspace's impressions table in `n` partitions, each written by its
    worker to `folders[view]/part-j.parquet`, sorted by timestamp and key: view -> (rows, latest
    timestamp)."""
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
    if not tops:  # no events, no snapshots: an empty part, which says the columns
        return {view: _write_parts(iter(()), part_file(folder, 0), view) for view, folder in folders.items()}
    last = _floor_day(until) if until is not None else _floor_day(max(tops)) + DAY

    # partition j: bucket j of every cut, in file order; every call is sent now (an actor runs
    # its calls one after the other), the item rows' once the item counts give the ranks
    user_parts = [[o[1 + j] for o in outs] for j in range(n)]
    item_parts = [[o[1 + n + j] for o in outs] for j in range(n)]
    del outs
    counts = [next(turn).rank_counts.remote(last, *item_parts[j]) for j in range(n)]
    items_ref = ray.put(items)
    users = [next(turn).users.remote(part_file(folders[USER_BEHAVIOUR], j), items_ref, params, last,
                                     *user_parts[j]) for j in range(n)]
    del user_parts
    ranks = ray.put(_ranks_from_counts(pl.concat(pl.from_arrow(t) for t in ray.get(counts))))
    item_calls = [next(turn).items.remote(part_file(folders[ITEM_BEHAVIOUR], j), ranks, params, last,
                                          *item_parts[j]) for j in range(n)]
    del item_parts
    return {USER_BEHAVIOUR: _sum_parts(ray.get(users)), ITEM_BEHAVIOUR: _sum_parts(ray.get(item_calls))}


def part_file(folder: Path, j: int) -> Path:
    return folder / f"part-{j:05d}.parquet"


def _sum_parts(written: list[tuple[int, datetime | None]]) -> tuple[int, datetime | None]:
    """(rows, latest timestamp) of a view from its parts'."""
    tops = [top for _, top in written if top is not None]
    return sum(rows for rows, _ in written), max(tops, default=None)


def build_features_on_ray(settings: Settings, ws: Workspace | None = None,
                          until: datetime | None = None) -> BuildResult:
    """`features.jobs.build_features` with the behaviour jobs on Ray: the same sources, as
    folders of parts that replace the previous sources at once, `feast apply`, and the MLflow run
    (`engine=ray` among its params)."""
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
        with (
            atomic_folder(paths[ITEM_BEHAVIOUR]) as item_folder,
            atomic_folder(paths[USER_BEHAVIOUR]) as user_folder,
        ):
            written = behaviour_on_ray(settings, ws, items, until, workers, n,
                                       {ITEM_BEHAVIOUR: item_folder, USER_BEHAVIOUR: user_folder})
    rows = {view: n for view, (n, _) in written.items()}
    last = written[USER_BEHAVIOUR][1]
    notes = content_and_apply(settings, ws, paths)
    return log_build(settings, ws, params, until, rows, paths, last, start, notes,
                     {"engine": "ray", "ray": where, "ray_workers": len(workers), "ray_partitions": n})
