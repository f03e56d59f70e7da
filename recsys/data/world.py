"""The embedded world (`recsys generate`): a deterministic, seeded simulated shop.

It writes the contract tables (items, users, impressions), the item pictures and the ground
truth (`recsys.data.truth`, which documents the click model and the logging policy).

- Items are indexed in creation order; ~75% exist before the log starts, the rest arrive
  during it (so a temporal test split holds cold items). Each has a category, colour, pattern
  and background (drawn in its picture and named in its text), a price and a hidden quality.
- Users have tastes over the attribute values around a few shared segments, an activity level
  (share of requests) and a creation time (~10% join during the log).
- Requests (slates of `slate_size`) are spread over `days`, generated in time order and in
  chunks, so memory stays bounded at any size.

Independent random streams (items, users, log, text) keep, e.g., the catalogue unchanged when only
the number of impressions changes.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import polars as pl

from recsys.data import appearance as A
from recsys.data import columns as C
from recsys.data import history
from recsys.data.config import WorldConfig
from recsys.data.contracts import validate_items, validate_users
from recsys.data.tables import save_table
from recsys.data.truth import DAY_US, WorldTruth, to_us
from recsys.io import atomic_path
from recsys.progress import bar
from recsys.workspace import Workspace

START = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday; fixed so a seed fixes every timestamp
POLICY_NAME = "world-logging-plackett-luce-v1"
TASTE_SCALES = (1.2, 0.8, 0.5, 0.3)  # category, colour, pattern, background
N_SEGMENTS = 16
QUALITY_STD = 0.8
BIAS = -5.0
CHUNK_REQUESTS = 50_000


@dataclass
class WorldResult:
    items: int
    users: int
    impressions: int
    clicks: int
    images: int
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        ctr = self.clicks / max(self.impressions, 1)
        return (
            f"{self.items:,} items ({self.images:,} images), {self.users:,} users, "
            f"{self.impressions:,} impressions ({self.clicks:,} clicks, CTR {ctr:.1%}) in "
            f"{self.seconds:.1f} s -> {self.paths.get('data', '')}"
        )


def _streams(seed: int) -> dict[str, np.random.Generator]:
    names = ("items", "users", "log", "text")
    return dict(
        zip(
            names,
            (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(names))),
            strict=True,
        )
    )


def _times(rng: np.random.Generator, n: int, lo_us: int, hi_us: int) -> np.ndarray:
    return np.sort(lo_us + (rng.random(n) * (hi_us - lo_us)).astype(np.int64))


def _ts_series(name: str, us: np.ndarray) -> pl.Series:
    return pl.Series(name, us, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def build_truth(cfg: WorldConfig, seed: int) -> tuple[WorldTruth, dict[str, np.random.Generator]]:
    """Draw the hidden state of the world: items, users, the click model, the logging policy."""
    S = cfg.slate_size
    if cfg.items < 3 * S:
        raise ValueError(f"world.items must be at least 3 x slate_size = {3 * S} (got {cfg.items})")
    rng = _streams(seed)
    start_us, end_us = to_us(START), to_us(START + timedelta(days=cfg.days))

    # items, in creation order
    r = rng["items"]
    n = cfg.items
    n_old = min(n, max(int(round(0.75 * n)), 3 * S))
    created = np.concatenate(
        [_times(r, n_old, start_us - 180 * DAY_US, start_us), _times(r, n - n_old, start_us, end_us)]
    )
    attrs = np.stack([r.integers(len(v), size=n) for _, v in A.GROUPS], axis=1).astype(np.int16)
    quality = r.normal(0.0, QUALITY_STD, n).astype(np.float32)
    legacy = (quality + r.normal(0.0, 0.5, n)).astype(np.float32)

    # users
    r = rng["users"]
    m = cfg.users
    late = r.random(m) < 0.10
    user_created = np.where(
        late,
        start_us + (r.random(m) * 0.8 * (end_us - start_us)).astype(np.int64),
        start_us - (r.random(m) * 365 * DAY_US).astype(np.int64),
    )
    scales = np.concatenate([np.full(len(v), s) for (_, v), s in zip(A.GROUPS, TASTE_SCALES, strict=True)])
    protos = r.normal(0.0, 1.0, (N_SEGMENTS, A.N_ATTRIBUTE_VALUES)) * scales
    segment = r.integers(N_SEGMENTS, size=m)
    taste = (protos[segment] + r.normal(0.0, 0.6, (m, A.N_ATTRIBUTE_VALUES)) * scales).astype(np.float32)
    activity = r.lognormal(0.0, 1.0, m)
    activity /= activity.sum()
    k = np.arange(max(50, S))
    truth = WorldTruth(
        start=START,
        end=START + timedelta(days=cfg.days),
        slate_size=S,
        temperature=cfg.temperature,
        candidates=min(cfg.candidates, n),
        bias=BIAS,
        position_bias=(1.0 / (k + 1.0)) ** 0.8,
        item_attributes=attrs,
        item_quality=quality,
        item_created_us=created,
        legacy_base=legacy,
        user_taste=taste,
        user_created_us=user_created,
        user_activity=activity,
        user_segment=segment.astype(np.int16),
        segment_taste=protos.astype(np.float32),
        item_width=max(5, len(str(n - 1))),
        user_width=max(6, len(str(m - 1))),
    )
    return truth, rng


def _items_frame(
    truth: WorldTruth, cfg: WorldConfig, rng: np.random.Generator, ws: Workspace
) -> pl.DataFrame:
    attrs = truth.item_attributes
    n = truth.n_items
    texts = [A.describe(*map(int, a), rng) for a in attrs]
    price = np.round(
        np.asarray(A.BASE_PRICE)[attrs[:, 0]] * np.exp(rng.normal(0, 0.35, n) + 0.1 * truth.item_quality), 2
    )
    has_image = rng.random(n) >= cfg.missing_image_rate
    ids = truth.item_ids.astype(str)
    if cfg.images:
        img_dir = ws.images_dir
        uris = [str(img_dir / f"{i}.png") if h else None for i, h in zip(ids, has_image, strict=True)]
    else:
        uris = [None] * n
    return pl.DataFrame(
        {
            C.ITEM_ID: ids,
            C.TITLE: [t for t, _ in texts],
            C.DESCRIPTION: [d for _, d in texts],
            C.CATEGORY: np.asarray(A.CATEGORIES)[attrs[:, 0]],
            C.PRICE: price,
            C.IMAGE_URI: pl.Series(uris, dtype=pl.String),
            C.IMAGE_SOURCE: np.where(np.asarray([u is not None for u in uris]), "original", "none"),
            C.CREATED_AT: _ts_series(C.CREATED_AT, truth.item_created_us),
        }
    )


def render_images(truth: WorldTruth, items: pl.DataFrame, size: int, seed: int, processes: int = 2) -> int:
    """Render every item picture named in `items.image_uri` (in parallel, up to `processes`)."""
    rows = items.select(C.IMAGE_URI).with_row_index().drop_nulls(C.IMAGE_URI)
    jobs = [
        (uri, *map(int, truth.item_attributes[i]), seed * 1_000_003 + int(i), size)
        for i, uri in zip(rows["index"].to_list(), rows[C.IMAGE_URI].to_list(), strict=True)
    ]
    batches = [jobs[i : i + 64] for i in range(0, len(jobs), 64)]
    procs = min(processes, os.cpu_count() or 1)
    with bar("images", total=len(jobs), unit="img") as b:
        if procs <= 1 or len(jobs) < 400:
            for batch in batches:
                b.advance(A.render_batch(batch))
        else:
            # fork: works from any script (spawn re-imports an unguarded __main__); the workers only
            # use PIL and numpy, never an OpenMP pool the parent may hold
            ctx = get_context("fork" if os.name == "posix" else "spawn")
            with ProcessPoolExecutor(max_workers=procs, mp_context=ctx) as pool:
                for done in pool.map(A.render_batch, batches):
                    b.advance(done)
    return len(jobs)


def _impressions_chunk(
    truth: WorldTruth,
    rng: np.random.Generator,
    users: np.ndarray,
    t_us: np.ndarray,
    first_request: int,
    req_width: int,
    ids: tuple[pl.Series, pl.Series],
) -> pl.DataFrame:
    """Requests (users, times, in time order) -> their logged impressions: Plackett-Luce slates
    over the day's logging scores, exact marginal propensities, clicks from the click model."""
    S = truth.slate_size
    items = truth.logging_slates_idx(rng, users, t_us)
    slot_prop = truth.slot_propensities_idx(users, items, t_us)  # (n, S slots shown, S slots)
    propensity = slot_prop[:, np.arange(S), np.arange(S)]  # each item at the slot it was shown in
    p_click = truth.position_bias[:S][None, :] * truth.relevance_idx(users[:, None], items)
    clicked = rng.random(items.shape) < p_click
    req = pl.Series(np.repeat(np.arange(first_request, first_request + len(users)), S)).cast(pl.String)
    return pl.DataFrame(
        {
            C.REQUEST_ID: "r" + req.str.zfill(req_width),
            C.USER_ID: ids[0].gather(np.repeat(users, S)),
            C.ITEM_ID: ids[1].gather(items.ravel()),
            C.POSITION: pl.Series(np.tile(np.arange(S, dtype=np.int32), len(users)), dtype=pl.Int32),
            C.EVENT_TIMESTAMP: _ts_series(C.EVENT_TIMESTAMP, np.repeat(t_us, S)),
            C.CLICKED: clicked.ravel(),
            C.PROPENSITY: propensity.ravel().astype(np.float64),
            C.SLOT_PROPENSITIES: pl.Series(slot_prop.reshape(-1, S).astype(np.float32)).cast(
                pl.List(pl.Float32)
            ),
        }
    ).with_columns(pl.lit(POLICY_NAME).alias(C.POLICY))


def write_impressions(
    truth: WorldTruth, n_impressions: int, rng: np.random.Generator, path: Path
) -> tuple[int, int]:
    """Simulate the logging policy for ~`n_impressions` and write them (in time order, chunk by
    chunk, atomically) to `path`. Returns (impressions, clicks)."""
    import pyarrow.parquet as pq

    S = truth.slate_size
    n_req = math.ceil(n_impressions / S)
    start_us, end_us = to_us(truth.start), to_us(truth.end)
    users = rng.choice(truth.n_users, size=n_req, p=truth.user_activity)
    t0 = np.maximum(start_us, truth.user_created_us[users])
    t = t0 + (rng.random(n_req) * (end_us - t0)).astype(np.int64)
    order = np.argsort(t, kind="stable")
    users, t = users[order], t[order]
    width = max(7, len(str(n_req - 1)))
    rows = clicks = 0
    ids = (pl.Series(truth.user_ids, dtype=pl.String), pl.Series(truth.item_ids, dtype=pl.String))
    with atomic_path(path, suffix=".parquet") as tmp, bar("impressions", total=n_req * S, unit="rows") as b:
        writer = None
        try:
            for lo in range(0, n_req, CHUNK_REQUESTS):
                hi = min(lo + CHUNK_REQUESTS, n_req)
                df = _impressions_chunk(truth, rng, users[lo:hi], t[lo:hi], lo, width, ids)
                table = df.to_arrow()
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                rows += df.height
                clicks += int(df[C.CLICKED].sum())
                b.advance(df.height, status=f"{clicks:,} clicks")
        finally:
            if writer is not None:
                writer.close()
    return rows, clicks


def generate_world(cfg: WorldConfig, seed: int, ws: Workspace) -> WorldResult:
    """Generate the embedded world into `ws`: items (+ pictures), users, impressions, truth."""
    began = time.perf_counter()
    truth, rng = build_truth(cfg, seed)
    items = _items_frame(truth, cfg, rng["text"], ws)
    n_images = render_images(truth, items, cfg.image_size, seed) if cfg.images else 0
    checked = validate_items(items, "embedded world items")
    checked.raise_if_bad()
    users = pl.DataFrame(
        {C.USER_ID: truth.user_ids.astype(str), C.CREATED_AT: _ts_series(C.CREATED_AT, truth.user_created_us)}
    )
    checked_users = validate_users(users, "embedded world users")
    checked_users.raise_if_bad()
    note = "generate (embedded world)"
    paths = {
        "data": ws.data_dir,
        "items": save_table(ws, "items", checked.good, note=note),
        "users": save_table(ws, "users", checked_users.good, note=note),
    }
    with history.new_version(ws, "impressions", note=note) as version_file:
        n_imp, n_clicks = write_impressions(truth, cfg.impressions, rng["log"], version_file)
    paths["impressions"] = ws.table("impressions")
    truth.save(ws)
    paths["truth"] = ws.truth_dir
    if cfg.images:
        paths["images"] = ws.images_dir
    return WorldResult(
        truth.n_items, truth.n_users, n_imp, n_clicks, n_images, time.perf_counter() - began, paths
    )
