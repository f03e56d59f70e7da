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

Who embeds is a parameter (`embed`, an `Embedder`): by default this process (`embed_local`);
`training.backfill_ray.embed_on_ray` runs the same per-batch code (`embed_batch`) in a pool of
Ray actors, one encoder each, across the cores or machines of a Ray cluster. Planning (hashes,
what is done), the resumable shards and the consolidation stay here, so both engines resume each
other's runs and give the same table.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
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
from recsys.embeddings.config import ClipConfig
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
    items: int  # items in the catalogue
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
    table: Path
    pushed: bool
    engine: str = "local"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        engine = f" on {self.engine}" if self.engine != "local" else ""
        text = (f"{self.model_version}{engine}: {self.embedded:,} embedded, {self.skipped:,} unchanged, "
                f"{self.resumed:,} resumed, {self.removed:,} removed of {self.items:,} items "
                f"({self.items_per_s:,.0f} items/s); images {self.outcomes or '{}'} -> {self.table}")
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


@dataclass(frozen=True)
class EmbedWork:
    """The items a run embeds (item-id order) with the text, image, source and hash of each."""

    ids: list[str]
    texts: list[str]
    uris: list[str | None]
    sources: list[str]
    hashes: list[str]
    stamp: datetime  # the rows' event_timestamp

    def __len__(self) -> int:
        return len(self.ids)

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame({"id": self.ids, "text": self.texts, "uri": self.uris, "source": self.sources,
                             "hash": self.hashes},
                            schema={c: pl.String for c in ("id", "text", "uri", "source", "hash")})


Embedder = Callable[[Settings, ClipEncoder, EmbedWork], Iterator[pl.DataFrame]]
"""Embeds the work, yielding its rows (`SCHEMA`, `image_outcome` included) batch by batch, in
any order; the driver's `encoder` names the version the rows must carry."""


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


def embed_batch(encoder: ClipEncoder, cfg: ClipConfig, uris: Sequence[str | None], ids: list[str],
                texts: list[str], sources: list[str], hashes: list[str], stamp: datetime) -> pl.DataFrame:
    """Decode, preprocess and embed one batch in this process (what a Ray actor runs)."""
    images = ItemImages(uris, encoder.preprocess, cfg.max_image_pixels, cfg.min_image_side,
                        encoder.image_size)
    pixels, ok, outcomes = collate([images[i] for i in range(len(images))])
    return _embed_rows(encoder, pixels, ok, outcomes, ids, texts, sources, hashes, cfg.image_weight, stamp)


def embed_local(settings: Settings, encoder: ClipEncoder, work: EmbedWork) -> Iterator[pl.DataFrame]:
    """Embed in this process; `clip.workers` DataLoader processes decode the images meanwhile."""
    import torch
    from torch.utils.data import DataLoader

    cfg = settings.clip
    dataset = ItemImages(work.uris, encoder.preprocess, cfg.max_image_pixels, cfg.min_image_side,
                         encoder.image_size)
    workers = cfg.workers if len(work) > cfg.batch_size else 0
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    offset = 0
    try:
        for pixels, ok, outcomes in loader:
            part = slice(offset, offset + len(ok))
            offset += len(ok)
            yield _embed_rows(encoder, pixels, ok, outcomes, work.ids[part], work.texts[part],
                              work.sources[part], work.hashes[part], cfg.image_weight, work.stamp)
    finally:
        del loader
        torch.set_num_threads(settings.threads)


def backfill(settings: Settings, ws: Workspace, force: bool = False, push_to_feast: bool = True,
             encoder: ClipEncoder | None = None, on_shard: Callable[[Path], None] | None = None,
             embed: Embedder = embed_local, engine: str = "local") -> BackfillResult:
    """Embed new or changed items into `item_embeddings` (see the module docstring).

    `encoder` defaults to `load_trained_encoder(settings)`; `on_shard` is called with each shard
    file once it is written (progress hooks; the tests use it to kill a run mid-way); `embed`
    does the embedding (`engine` names it in the summary and the MLflow run).
    """
    run_start = time.time()  # temp files older than this are a stopped run's
    configure_threads(settings.threads)
    import mlflow

    from recsys import tracking

    start = time.perf_counter()
    cfg = settings.clip
    encoder = encoder or load_trained_encoder(settings)
    items = load_table(ws, "items").sort(C.ITEM_ID)
    ids = items[C.ITEM_ID].to_list()
    texts = item_texts(items)
    uris = items[C.IMAGE_URI].to_list() if C.IMAGE_URI in items.columns else [None] * items.height
    sources = (items[C.IMAGE_SOURCE].fill_null("none").to_list() if C.IMAGE_SOURCE in items.columns
               else ["original" if u else "none" for u in uris])
    hashes = [content_hash(read_bytes(u), t, encoder.version, cfg.image_weight)
              for u, t in zip(uris, texts, strict=True)]
    current = pl.DataFrame({C.ITEM_ID: ids, C.CONTENT_HASH: hashes}, schema={C.ITEM_ID: pl.String,
                                                                              C.CONTENT_HASH: pl.String})

    tag = "all"
    shard_dir = ws.embeddings_dir
    remove_stale_temps(shard_dir, [f"part-{tag}-*.parquet"], run_start)  # a killed run's
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

    work = EmbedWork([ids[k] for k in todo], [texts[k] for k in todo], [uris[k] for k in todo],
                     [sources[k] for k in todo], [hashes[k] for k in todo], datetime.now(UTC))
    workers = cfg.workers if len(todo) > cfg.batch_size else 0
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
        for rows in (embed(settings, encoder, work) if len(work) else ()):
            if rows.height and rows[C.MODEL_VERSION][0] != encoder.version:
                raise RuntimeError(f"an embedder returned rows of {rows[C.MODEL_VERSION][0]}, expected "
                                   f"{encoder.version}: its workers loaded another encoder")
            for o in rows["image_outcome"].to_list():
                outcomes[o] = outcomes.get(o, 0) + 1
            pending.append(rows)
            if sum(f.height for f in pending) >= cfg.shard_rows:
                flush()
            b.advance(rows.height, status=f"{len(written)} shards")
        flush()
    embed_seconds = time.perf_counter() - embed_start

    pushed = False
    all_shards = shard_paths + written
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
    sources_count: dict[str, int] = {}
    if table_path.exists():
        counts = pl.read_parquet(table_path, columns=[C.IMAGE_SOURCE])[C.IMAGE_SOURCE].value_counts()
        sources_count = dict(zip(counts[C.IMAGE_SOURCE].to_list(), counts["count"].to_list(), strict=True))
    result = BackfillResult(
        items=len(ids), embedded=len(todo), skipped=len(ids) - len(todo) - (0 if force else in_shards.height),
        resumed=0 if force else in_shards.height, removed=removed, outcomes=outcomes,
        image_sources=sources_count,
        model_version=encoder.version, seconds=time.perf_counter() - start,
        items_per_s=len(todo) / max(embed_seconds, 1e-9), shards_written=len(written),
        table=table_path, pushed=pushed, engine=engine,
    )
    with tracking.start_run(settings, "backfill", run_name=f"backfill-{engine}"):
        tracking.log_lineage({"items": ws.table("items")})
        mlflow.log_params({"model_version": encoder.version, "precision": cfg.precision,
                           "batch_size": cfg.batch_size, "workers": workers, "engine": engine,
                           "force": force})
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
