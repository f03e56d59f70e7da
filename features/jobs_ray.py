"""`recsys features build --engine ray`: the behaviour jobs of `features.jobs`, partition by
partition on Ray actors.

Every behaviour value depends on one key's events only (the premise of `features.jobs`' own
parts), except an item's `popularity_rank`, which ranks it among all items. So the driver
normalizes the log once, computes the last snapshot and the popularity ranks over all items
(`_popularity_ranks`: one rank per (day, 7-day count)), and cuts the keys into contiguous partitions of about
equal event counts (`ray.partitions_per_worker` per worker); `ray.workers` `BehaviourParts`
actors then run the local job's own code on their keys' events: `user_behaviour` for users, and
the windowed counts plus the global ranks for items. The rows are the local job's (same values;
the file holds them in another order of parts), written, registered and recorded as
`build_features` does.

Actors rather than tasks: the job runs on `ray.workers` processes (tasks would take every CPU
of the cluster), started before the driver reads the log so that their start and imports
overlap it, each with its next partition already shipped while it computes one
(`recsys.distributed.tasks.ordered_results`). Item partitions carry only the columns the item
job reads.

Feast 0.67's Ray offline store and compute engine run Feast transformations over a Ray
Dataset; ours are polars functions over the whole log, so plain Ray actors serve them better.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime
from itertools import accumulate, islice
from typing import Any

import polars as pl
import pyarrow as pa

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
    read_events,
    remove_temps,
    user_behaviour,
)
from recsys.config import Settings
from recsys.data import columns as C
from recsys.distributed.cluster import ray_session, worker_count
from recsys.distributed.tasks import actors, ordered_results
from recsys.io import atomic_path
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

log = logging.getLogger(__name__)


def key_partitions(events: pl.DataFrame, key: str, n: int) -> list[pl.DataFrame]:
    """`events` cut by `key` into at most `n` parts of about equal event counts (keys sorted,
    a key never split; parts in key order): slices of the events sorted by key once, each key's
    events in their order."""
    events = events.sort(key, maintain_order=True)
    counts = events.group_by(key, maintain_order=True).agg(rows=pl.len())
    total = max(events.height, 1)
    sizes = (counts.group_by(((pl.col("rows").cum_sum() - pl.col("rows")) * n // total).alias("part"),
                             maintain_order=True)
             .agg(pl.col("rows").sum())["rows"].to_list())
    offsets = [0, *accumulate(sizes)]
    return [events.slice(start, rows) for start, rows in zip(offsets, sizes, strict=False)]


class BehaviourParts:
    """A Ray actor computing behaviour parts with the local job's code: one process per worker,
    which imports polars and the jobs once for all its parts. Frames travel as Arrow tables,
    which Ray ships without re-encoding them (a polars frame is pickled through IPC bytes)."""

    def __init__(self, threads: int) -> None:
        configure_threads(threads)

    def items(self, events: pa.Table, ranks: tuple[pl.DataFrame, pl.DataFrame], params: BehaviourParams,
              last: datetime) -> pa.Table:
        frame = _with_popularity_rank(_windowed_counts(pl.from_arrow(events), C.ITEM_ID, last, params), ranks)
        return frame.select(list(source_schema(ITEM_BEHAVIOUR))).sort(TS, C.ITEM_ID).to_arrow()

    def users(self, events: pa.Table, items: pl.DataFrame | None, params: BehaviourParams,
              last: datetime) -> pa.Table:
        return user_behaviour(pl.from_arrow(events), items, params, until=last).to_arrow()


def behaviour_on_ray(settings: Settings, impressions: pl.DataFrame, items: pl.DataFrame | None,
                     until: datetime | None, workers: list) -> dict[str, Iterator[pl.DataFrame]]:
    """The user and item behaviour sources as parts computed by `workers` (`BehaviourParts`
    actors, in an open session): view -> its parts in key order, each sorted by timestamp and
    key. Read the user parts first, then the item parts: the user parts (most of the work) start
    as soon as they are cut, and the popularity ranks and item parts are made while they run."""
    import ray

    params = BehaviourParams.from_settings(settings)
    events = normalize_events(impressions)
    last = _last_stamp(events, until)
    if last is None:
        return {USER_BEHAVIOUR: iter(()), ITEM_BEHAVIOUR: iter(())}
    n = len(workers) * settings.ray.partitions_per_worker
    items_ref = ray.put(items)
    user_parts = key_partitions(events, C.USER_ID, n)

    def jobs() -> Iterator[tuple[str, pl.DataFrame, Any]]:
        yield from (("users", p, items_ref) for p in user_parts)
        ranks = ray.put(_popularity_ranks(events, last))
        # an item's counts need only its own events' time and click: the user column stays here
        yield from (("items", p, ranks) for p in key_partitions(events.select(C.ITEM_ID, TS, C.CLICKED),
                                                                C.ITEM_ID, n))

    def call(actor: Any, job: tuple[str, pl.DataFrame, Any]) -> Any:
        kind, part, extra = job
        return getattr(actor, kind).remote(part.to_arrow(), extra, params, last)

    results = (pl.from_arrow(table) for table in ordered_results(workers, call, jobs()))
    return {USER_BEHAVIOUR: islice(results, len(user_parts)), ITEM_BEHAVIOUR: results}


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
        # the actors' processes start and import while the log is read
        impressions = read_events(ws)
        items = (load_table(ws, "items", columns=[C.ITEM_ID, C.CATEGORY]) if ws.table("items").exists()
                 else None)
        parts = behaviour_on_ray(settings, impressions, items, until, workers)
        del impressions
        with (
            atomic_path(paths[ITEM_BEHAVIOUR], ".parquet") as item_tmp,
            atomic_path(paths[USER_BEHAVIOUR], ".parquet") as user_tmp,
        ):
            user_rows, last = _write_parts(parts[USER_BEHAVIOUR], user_tmp, USER_BEHAVIOUR)
            rows = {ITEM_BEHAVIOUR: _write_parts(parts[ITEM_BEHAVIOUR], item_tmp, ITEM_BEHAVIOUR)[0],
                    USER_BEHAVIOUR: user_rows}
    notes = content_and_apply(settings, ws, paths)
    return log_build(settings, ws, params, until, rows, paths, last, start, notes,
                     {"engine": "ray", "ray": where, "ray_workers": len(workers)})
