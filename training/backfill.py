"""`recsys backfill`: embed new or changed items and publish the vectors to Feast.

How it stays incremental, resumable and exact:

* Every item gets a content hash of what determines its row: the image file's bytes, the
  embedded text (description, else title), the encoder version and the fusion weight. Items
  whose hash already has a row (in the `item_embeddings` table or a shard) are skipped.
* Items to embed run in item-id order through a DataLoader whose worker processes read, decode
  (robustly: see `recsys.embeddings.images`) and preprocess images while the main process runs
  the model. Every `clip.shard_rows` rows are written as one parquet shard under
  `<workspace>/embeddings/` (temp file + rename: a shard exists whole or not at all).
* At the end the table is consolidated: one row per current item, the row whose hash matches,
  written atomically; then the table is pushed to Feast; then the shards are deleted. A run
  killed at any point leaves whole shards and an untouched table: the next run skips what the
  shards hold and consolidates; rows are keyed by item, so none is duplicated or lost.

Scale-out (`--shard i/n`): a run with `shard=(i, n)` embeds only the items whose id hashes to
i mod n and leaves its shards in place (no consolidation, no push). Run n of them (machines
sharing the workspace folder, or Dask workers), then one plain `recsys backfill`: it finds
every item done, embeds nothing, consolidates and pushes. With Dask::

    from dask.distributed import Client
    client = Client("tcp://scheduler:8786")  # workers see the same RECSYS_HOME (shared disk)
    n = len(client.scheduler_info()["workers"])
    futures = [client.submit(run_backfill_shard, i, n, pure=False) for i in range(n)]
    client.gather(futures)          # each: backfill(load_settings(), ws, shard=(i, n))
    backfill(load_settings(), ws)   # consolidate + publish, embeds nothing new

(`run_backfill_shard(i, n)` is the three-line function that builds settings and a workspace
and calls `backfill(..., shard=(i, n))`; a shard is idempotent, so a lost worker's task is
simply resubmitted.)
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.history import remove_temps
from recsys.data.tables import load_table, save_table
from recsys.embeddings.encoder import ClipEncoder, fuse, load_trained_encoder
from recsys.embeddings.images import load_image, read_bytes
from recsys.io import remove_stale_temps, write_parquet
from recsys.progress import bar
from recsys.runtime import configure_threads
from recsys.workspace import Workspace
from training.clip import item_texts

log = logging.getLogger(__name__)
VECTOR = pl.List(pl.Float32)
SCHEMA = {
    C.ITEM_ID: pl.String(), C.IMAGE_EMBEDDING: VECTOR, C.TEXT_EMBEDDING: VECTOR, C.EMBEDDING: VECTOR,
    C.IMAGE_SOURCE: pl.String(), C.MODEL_VERSION: pl.String(), C.CONTENT_HASH: pl.String(),
    C.EVENT_TIMESTAMP: pl.Datetime("us", "UTC"), "image_outcome": pl.String(),
}
TABLE_COLUMNS = [c for c in SCHEMA if c != "image_outcome"]


@dataclass
class BackfillResult:
    items: int  # items in scope (the whole catalogue, or this shard's part)
    embedded: int
    skipped: int  # unchanged since their row was written
    resumed: int  # rows recovered from shards of an earlier, interrupted run
    removed: int  # rows dropped because their item left the catalogue
    outcomes: dict[str, int]  # image outcome of the embedded items
    image_sources: dict[str, int]
    model_version: str
    seconds: float
    items_per_s: float
    shards_written: int
    table: Path | None  # None for a shard run (consolidated later)
    pushed: bool
    shard: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        scope = f" shard {self.shard[0]}/{self.shard[1]}" if self.shard else ""
        text = (f"{self.model_version}{scope}: {self.embedded:,} embedded, {self.skipped:,} unchanged, "
                f"{self.resumed:,} resumed, {self.removed:,} removed of {self.items:,} items "
                f"({self.items_per_s:,.0f} items/s); images {self.outcomes or '{}'}")
        if self.table is not None:
            text += f" -> {self.table}"
        if self.pushed:
            text += " + Feast"
        return text


def content_hash(image_bytes: bytes, text: str, version: str, image_weight: float) -> str:
    """Hash of everything that determines an item's row."""
    h = hashlib.sha256()
    h.update(f"{version}\0{image_weight:.6g}\0".encode())
    h.update(hashlib.sha256(image_bytes).digest())
    h.update(text.encode("utf-8", "replace"))
    return h.hexdigest()


def shard_of(item_id: str, n: int) -> int:
    """The shard (0..n-1) an item belongs to: a stable hash of its id."""
    digest = hashlib.blake2b(item_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n), with 0 <= i < n."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got '{text}'") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text}: need 0 <= i < n")
    return i, n


class ItemImages:
    """Dataset of (pixels or None, outcome) per item; runs in DataLoader worker processes."""

    def __init__(self, uris: Sequence[str | None], preprocess: Callable, max_pixels: int, min_side: int,
                 draft_size: int):
        self.uris, self.preprocess = list(uris), preprocess
        self.max_pixels, self.min_side, self.draft_size = max_pixels, min_side, draft_size

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int) -> tuple[Any, str]:
        image, outcome = load_image(self.uris[i], self.max_pixels, self.min_side, self.draft_size)
        if image is None:
            return None, outcome
        try:
            return self.preprocess(image), outcome
        except Exception as exc:  # a transform failing on one odd image must not stop the run
            return None, f"preprocess failed: {type(exc).__name__}"


def collate(batch: list[tuple[Any, str]]) -> tuple[Any, np.ndarray, list[str]]:
    """Stack the decoded images of a batch; returns (pixels of the ok ones, ok mask, outcomes)."""
    import torch

    ok = np.array([px is not None for px, _ in batch], dtype=bool)
    pixels = torch.stack([px for px, _ in batch if px is not None]) if ok.any() else None
    return pixels, ok, [o for _, o in batch]


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def _read_shards(paths: list[Path]) -> pl.DataFrame:
    frames = []
    for p in paths:
        try:
            frames.append(pl.read_parquet(p))
        except Exception as exc:  # shards are written atomically; anything else is not ours
            log.warning("ignoring unreadable shard %s: %s", p, exc)
    return pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema=SCHEMA)


def _vectors(arr: np.ndarray, valid: np.ndarray | None = None) -> pl.Series:
    """(n, d) float32 -> a list[f32] column; rows where `valid` is False become null."""
    series = pl.Series(np.ascontiguousarray(arr, dtype=np.float32)).cast(VECTOR)
    if valid is None:
        return series
    return pl.select(pl.when(pl.Series(valid, dtype=pl.Boolean)).then(series)).to_series()


def _embed_rows(encoder: ClipEncoder, pixels: Any, ok: np.ndarray, outcomes: list[str], ids: list[str],
                texts: list[str], sources: list[str], hashes: list[str], image_weight: float,
                stamp: datetime) -> pl.DataFrame:
    text_vecs = encoder.encode_tokens(encoder.tokenize(texts))
    image_vecs = np.zeros_like(text_vecs)
    if pixels is not None:
        image_vecs[ok] = encoder.encode_pixels(pixels)
    fused = fuse(image_vecs, text_vecs, ok, image_weight)
    n = len(ids)
    return pl.DataFrame({
        C.ITEM_ID: ids,
        C.IMAGE_EMBEDDING: _vectors(image_vecs, valid=ok),
        C.TEXT_EMBEDDING: _vectors(text_vecs),
        C.EMBEDDING: _vectors(fused),
        C.IMAGE_SOURCE: [s if o else "none" for s, o in zip(sources, ok, strict=True)],
        C.MODEL_VERSION: [encoder.version] * n,
        C.CONTENT_HASH: hashes,
        C.EVENT_TIMESTAMP: pl.Series([stamp] * n, dtype=pl.Datetime("us", "UTC")),
        "image_outcome": outcomes,
    }, schema=SCHEMA)


def backfill(settings: Settings, ws: Workspace, shard: tuple[int, int] | None = None, force: bool = False,
             push_to_feast: bool = True, encoder: ClipEncoder | None = None,
             on_shard: Callable[[Path], None] | None = None) -> BackfillResult:
    """Embed new or changed items into `item_embeddings` (see the module docstring).

    `encoder` defaults to `load_trained_encoder(settings)`; `on_shard` is called with each shard
    file once it is written (progress hooks; the tests use it to kill a run mid-way).
    """
    run_start = time.time()  # temp files older than this are a stopped run's
    configure_threads(settings.threads)
    import mlflow
    import torch
    from torch.utils.data import DataLoader

    from recsys import tracking

    start = time.perf_counter()
    cfg = settings.clip
    encoder = encoder or load_trained_encoder(settings)
    items = load_table(ws, "items").sort(C.ITEM_ID)
    if shard is not None:
        i, n = shard
        mine = [shard_of(x, n) == i for x in items[C.ITEM_ID].to_list()]
        items = items.filter(pl.Series(mine, dtype=pl.Boolean))
    ids = items[C.ITEM_ID].to_list()
    texts = item_texts(items)
    uris = items[C.IMAGE_URI].to_list() if C.IMAGE_URI in items.columns else [None] * items.height
    sources = (items[C.IMAGE_SOURCE].fill_null("none").to_list() if C.IMAGE_SOURCE in items.columns
               else ["original" if u else "none" for u in uris])
    hashes = [content_hash(read_bytes(u), t, encoder.version, cfg.image_weight)
              for u, t in zip(uris, texts, strict=True)]
    current = pl.DataFrame({C.ITEM_ID: ids, C.CONTENT_HASH: hashes}, schema={C.ITEM_ID: pl.String,
                                                                              C.CONTENT_HASH: pl.String})

    tag = f"{shard[0]}of{shard[1]}" if shard else "all"
    shard_dir = ws.embeddings_dir
    remove_stale_temps(shard_dir, [f"part-{tag}-*.parquet"], run_start)  # a killed run's, this scope's
    if shard is None:  # the run that writes the item_embeddings table
        remove_temps(ws, "item_embeddings", run_start)
    shard_paths = sorted(shard_dir.glob("part-*.parquet"))
    from_shards = _read_shards(shard_paths)
    table_path = ws.table("item_embeddings")
    table = (pl.read_parquet(table_path) if table_path.exists()
             else pl.DataFrame(schema=SCHEMA).drop("image_outcome"))
    key = [C.ITEM_ID, C.CONTENT_HASH]
    in_table = current.join(table.select(key), on=key, how="semi")
    in_shards = (current.join(from_shards.select(key), on=key, how="semi")
                 .join(in_table, on=C.ITEM_ID, how="anti"))
    done = set() if force else set(in_table[C.ITEM_ID].to_list()) | set(in_shards[C.ITEM_ID].to_list())
    todo = np.array([k for k, item_id in enumerate(ids) if item_id not in done], dtype=np.int64)

    stamp = datetime.now(UTC)
    dataset = ItemImages([uris[k] for k in todo], encoder.preprocess, cfg.max_image_pixels,
                         cfg.min_image_side, encoder.image_size)
    workers = cfg.workers if len(todo) > cfg.batch_size else 0
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    outcomes: dict[str, int] = {}
    pending: list[pl.DataFrame] = []
    written: list[Path] = []
    new_frames: list[pl.DataFrame] = []

    def flush() -> None:
        if not pending:
            return
        frame = pl.concat(pending)
        pending.clear()
        path = shard_dir / f"part-{tag}-{uuid.uuid4().hex[:16]}.parquet"
        write_parquet(frame, path)
        written.append(path)
        new_frames.append(frame)
        if on_shard is not None:
            on_shard(path)

    embed_start = time.perf_counter()
    with bar("backfill", len(todo), unit="items") as b:
        offset = 0
        for pixels, ok, batch_outcomes in loader:
            idx = todo[offset:offset + len(ok)]
            offset += len(ok)
            rows = _embed_rows(encoder, pixels, ok, batch_outcomes, [ids[k] for k in idx],
                               [texts[k] for k in idx], [sources[k] for k in idx], [hashes[k] for k in idx],
                               cfg.image_weight, stamp)
            for o in batch_outcomes:
                outcomes[o] = outcomes.get(o, 0) + 1
            pending.append(rows)
            if sum(f.height for f in pending) >= cfg.shard_rows:
                flush()
            b.advance(len(ok), status=f"{len(written)} shards")
        flush()
    embed_seconds = time.perf_counter() - embed_start
    del loader
    torch.set_num_threads(settings.threads)

    result_table: Path | None = None
    removed = 0
    pushed = False
    all_shards = shard_paths + written
    if shard is None:
        removed = table.join(current, on=C.ITEM_ID, how="anti").height
        if len(todo) or all_shards or removed or not table_path.exists():
            candidates = pl.concat([table, *[f.drop("image_outcome") for f in [from_shards, *new_frames]]],
                                   how="vertical_relaxed")  # newest last
            final = (candidates.join(current, on=[C.ITEM_ID, C.CONTENT_HASH], how="semi")
                     .unique(C.ITEM_ID, keep="last", maintain_order=True).sort(C.ITEM_ID)
                     .select(TABLE_COLUMNS))
            if final.height != len(ids):
                raise RuntimeError(f"consolidation found {final.height} rows for {len(ids)} items; "
                                   f"shards in {shard_dir} are inconsistent: rerun with --force")
            save_table(ws, "item_embeddings", final)
            if push_to_feast:
                _publish(settings, ws)
                pushed = True
            for p in all_shards:
                p.unlink(missing_ok=True)
        result_table = table_path
    sources_count: dict[str, int] = {}
    if shard is None and table_path.exists():
        counts = pl.read_parquet(table_path, columns=[C.IMAGE_SOURCE])[C.IMAGE_SOURCE].value_counts()
        sources_count = dict(zip(counts[C.IMAGE_SOURCE].to_list(), counts["count"].to_list(), strict=True))
    result = BackfillResult(
        items=len(ids), embedded=len(todo), skipped=len(ids) - len(todo) - (0 if force else in_shards.height),
        resumed=0 if force else in_shards.height, removed=removed, outcomes=outcomes,
        image_sources=sources_count,
        model_version=encoder.version, seconds=time.perf_counter() - start,
        items_per_s=len(todo) / max(embed_seconds, 1e-9), shards_written=len(written),
        table=result_table, pushed=pushed, shard=shard,
    )
    with tracking.start_run(settings, "backfill", run_name=f"backfill-{tag}"):
        tracking.log_lineage({"items": ws.table("items")})
        mlflow.log_params({"model_version": encoder.version, "precision": cfg.precision,
                           "batch_size": cfg.batch_size, "workers": workers, "shard": tag, "force": force})
        mlflow.log_metrics({"items": result.items, "embedded": result.embedded, "skipped": result.skipped,
                            "resumed": result.resumed, "removed": result.removed,
                            "items_per_s": result.items_per_s, "seconds": result.seconds,
                            "shards_written": result.shards_written})
        mlflow.log_dict({"outcomes": outcomes, "image_sources": result.image_sources}, "outcomes.json")
    log.info(result.summary())
    return result


def _publish(settings: Settings, ws: Workspace) -> None:
    try:
        from features.jobs import publish_item_content
    except ImportError as exc:
        raise RuntimeError("cannot push item embeddings to Feast: features.jobs.publish_item_content is "
                           "not available; run the backfill with --no-push") from exc
    publish_item_content(settings, ws)
