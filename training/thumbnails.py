"""`recsys thumbnails train | generate | evaluate`: diffusion thumbnails for items without images.

- train: the embedded UNet (`recsys.thumbnails.model`) on the catalogue's items that have a
  readable original image, conditioned on their description's CLIP text vector (the registered
  `clip@champion` encoder). A seeded share of those items (`thumbnails.eval_holdout`) is kept
  out so `evaluate` can hide their real image and judge honestly. Loss curve and a grid of
  samples per epoch go to MLflow; the model is registered as `thumbnails` @champion.
- generate: every item without a usable image gets a PNG under `<home>/thumbnails/`, its
  `image_uri` and `image_source = generated` in the items table (written once, atomically) and
  a provenance row (`provenance.parquet`: model, version, seed, guidance, steps, prompt, status).
  Per-item seeds make each picture independent of batching, so runs resume (items already drawn
  are skipped unless `force`) and one failing item is recorded without stopping the batch.
- evaluate: CLIP score of generated vs real vs mismatched pairs, and text->image Recall@K for
  held-out items shown with their generated thumbnail vs with no image (a placeholder).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from PIL import Image

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.splits import hashed_fraction
from recsys.data.tables import load_table, portable_images, resolved_images, save_table
from recsys.embeddings.images import is_ok, load_image
from recsys.io import atomic_path, write_parquet
from recsys.progress import bar
from recsys.runtime import resolve_device
from recsys.thumbnails.backends import (
    EmbeddedThumbnailer,
    TextImageEncoder,
    Thumbnailer,
    pipeline_thumbnailer,
)
from recsys.thumbnails.images import grid
from recsys.thumbnails.metrics import mismatched_scores, paired_scores, recall_at_k
from recsys.thumbnails.model import CheckpointError, ThumbnailModel, images_to_tensor
from recsys.thumbnails.prompts import PromptError, prompt_for
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
MODEL_NAME = "thumbnails"
PROVENANCE = "provenance.parquet"
PROVENANCE_SCHEMA = {
    C.ITEM_ID: pl.String, C.IMAGE_URI: pl.String, "model_name": pl.String, "model_version": pl.String,
    "backend": pl.String, "seed": pl.Int64, "guidance_scale": pl.Float64, "steps": pl.Int64,
    "sampler": pl.String, "prompt": pl.String, "status": pl.String, "error": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
}


# --- shared helpers ---------------------------------------------------------------------------
def load_encoder(settings: Settings, encoder: TextImageEncoder | None = None) -> TextImageEncoder:
    """The CLIP encoder whose text vectors condition the model (`clip@champion` by default)."""
    if encoder is not None:
        return encoder
    from recsys.embeddings.encoder import load_trained_encoder

    return load_trained_encoder(settings)


def item_seed(seed: int, item_id: str) -> int:
    """A per-item sampling seed: stable across runs, batches and catalogue order."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=4).digest(), "big")


def in_holdout(item_ids: Sequence[str], fraction: float, seed: int) -> np.ndarray:
    """Items kept out of thumbnail training for evaluation (seeded hash of the id)."""
    return hashed_fraction(item_ids, fraction, salt=f"thumbnails:{seed}")


def _prompts(items: pl.DataFrame, max_chars: int) -> list[str | PromptError]:
    out: list[str | PromptError] = []
    for row in items.select(C.ITEM_ID, C.DESCRIPTION, C.TITLE, C.CATEGORY).iter_rows():
        try:
            out.append(prompt_for(row[0], row[1], row[2], row[3], max_chars))
        except PromptError as exc:
            out.append(exc)
    return out


def _pairs(settings: Settings, items: pl.DataFrame,
           source: str = "original") -> tuple[pl.DataFrame, list[Image.Image], list[str]]:
    """Items of `source` with a prompt and a readable image: (rows, images decoded once, prompts).

    The prompt is checked first, so an item without text is never decoded."""
    cand = items.filter((pl.col(C.IMAGE_SOURCE) == source) & pl.col(C.IMAGE_URI).is_not_null())
    prompts = _prompts(cand, settings.thumbnails.max_prompt_chars)
    keep, images, texts = [], [], []
    for i, (uri, prompt) in enumerate(zip(cand[C.IMAGE_URI].to_list(), prompts, strict=True)):
        if isinstance(prompt, PromptError):
            continue
        image, outcome = load_image(uri, settings.clip.max_image_pixels, settings.clip.min_image_side)
        if is_ok(outcome):
            keep.append(i)
            images.append(image)
            texts.append(prompt)
    return cand[keep], images, texts


# --- train ------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    model_tag: str
    train_items: int
    holdout_items: int
    epochs: int
    steps: int
    final_loss: float
    seconds: float
    parameters: int
    losses: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.model_tag} @champion: {self.parameters / 1e6:.1f}M-param UNet, {self.train_items:,} "
                f"items ({self.holdout_items:,} held out), {self.epochs} epochs / {self.steps} steps, "
                f"final loss {self.final_loss:.4f}")


class _Ema:
    """Exponential moving average of the weights (with warm-up): steadier samples after few steps."""

    def __init__(self, module: Any, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}
        self.updates = 0

    def update(self, module: Any) -> None:
        import torch

        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for k, v in module.state_dict().items():
                if v.dtype.is_floating_point:
                    self.shadow[k].lerp_(v.detach(), 1 - d)
                else:
                    self.shadow[k].copy_(v)


def _with_weights(model: ThumbnailModel, state: dict | None) -> ThumbnailModel:
    """A copy of `model` carrying `state` (the EMA weights) for sampling and saving."""
    import copy

    if state is None:
        return model
    twin = ThumbnailModel(copy.deepcopy(model.unet), model.train_scheduler, model.meta)
    twin.unet.load_state_dict(state)
    return twin


def train_thumbnails(settings: Settings, ws: Workspace,
                     encoder: TextImageEncoder | None = None) -> TrainResult:
    """Train the embedded thumbnail model on the catalogue and register it as thumbnails@champion."""
    import mlflow
    import torch

    from recsys import tracking

    cfg = settings.thumbnails
    if cfg.backend != "embedded":
        raise ValueError("thumbnails.backend is 'pipeline': a pretrained pipeline is not trained here; "
                         "run `recsys thumbnails generate` directly")
    start = time.perf_counter()
    encoder = load_encoder(settings, encoder)
    items = load_table(ws, "items")
    imaged, images, prompts = _pairs(settings, items)
    held = in_holdout(imaged[C.ITEM_ID].to_list(), cfg.eval_holdout, settings.seed)
    train_idx = np.flatnonzero(~held)
    if len(train_idx) < 2:
        raise ValueError(f"{ws.table('items')}: only {len(train_idx)} items with a readable original image "
                         f"and text to train thumbnails on; need at least 2")
    device = resolve_device(settings.device)
    pixels = images_to_tensor([images[i] for i in train_idx], cfg.resolution)
    cond = torch.from_numpy(encoder.encode_texts([prompts[i] for i in train_idx]))
    model = ThumbnailModel.create(cfg, encoder.dim, seed=settings.seed).to(device)
    unet = model.unet
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    ema = _Ema(unet, cfg.ema_decay) if cfg.ema_decay > 0 else None
    gen = torch.Generator().manual_seed(settings.seed)
    n = len(train_idx)
    steps_per_epoch = max(1, n // cfg.batch_size) if n >= cfg.batch_size else 1
    total = steps_per_epoch * cfg.epochs
    # warm-up then cosine decay: short runs need a high rate early and a quiet finish
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, total))
    # grid: held-out items when there are any (what generation faces), else training items
    grid_pool = np.flatnonzero(held) if held.any() else train_idx
    grid_idx = grid_pool[:cfg.grid_items]
    grid_cond = encoder.encode_texts([prompts[i] for i in grid_idx])
    grid_seeds = [item_seed(settings.seed, imaged[C.ITEM_ID][int(i)]) for i in grid_idx]
    losses: list[float] = []
    bf16 = cfg.train_precision == "bfloat16"
    with tracking.start_run(settings, "thumbnails", run_name="train"):
        tracking.log_lineage({"items": ws.table("items")}, extra={"encoder": encoder.version})
        mlflow.log_params({f"thumbnails.{k}": v for k, v in cfg.model_dump().items()})
        mlflow.log_params({"encoder": encoder.version, "train_items": n, "holdout_items": int(held.sum()),
                           "parameters": model.num_parameters(), "device": device})
        step = 0
        with bar("train thumbnails", total=total, unit="step") as b:
            for epoch in range(cfg.epochs):
                unet.train()
                perm = torch.randperm(n, generator=gen)
                epoch_losses = []
                for s in range(steps_per_epoch):
                    idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                    loss = model.training_loss(pixels[idx], cond[idx], cfg.cond_dropout, gen, bf16)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    if ema:
                        ema.update(unet)
                    value = float(loss.detach())
                    if not np.isfinite(value):
                        raise FloatingPointError(f"thumbnail training diverged at step {step} "
                                                 f"(loss {value}); lower thumbnails.learning_rate")
                    losses.append(value)
                    epoch_losses.append(value)
                    step += 1
                    b.advance(1, status=f"epoch {epoch + 1}/{cfg.epochs} loss {value:.4f}")
                _log_epoch(losses, step - len(epoch_losses), epoch, epoch_losses)
                if len(grid_idx):
                    sampler = _with_weights(model, ema.shadow if ema else None)
                    fakes = sampler.sample(grid_cond, grid_seeds, cfg.steps, cfg.guidance_scale, cfg.sampler)
                    reals = [images[int(i)] for i in grid_idx]
                    mlflow.log_image(grid([reals, fakes]), artifact_file=f"samples/epoch_{epoch + 1:03d}.png")
        _log_loss_curve(losses)
        final = _with_weights(model, ema.shadow if ema else None)
        meta = {
            "model": MODEL_NAME, "encoder_version": encoder.version, "output_size": cfg.output_size,
            "holdout": cfg.eval_holdout, "split_seed": settings.seed, "train_items": n,
            "holdout_items": int(held.sum()), "epochs": cfg.epochs, "steps": step,
            "final_loss": float(np.mean(losses[-steps_per_epoch:])) if losses else None,
            "sampler": cfg.sampler, "sample_steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
            "prediction_type": cfg.prediction_type, "trained_at": datetime.now(UTC).isoformat(),
        }
        tmp = Path(tempfile.mkdtemp(dir=ws.models_dir, prefix=".thumbnails-"))
        try:
            final.to("cpu").save(tmp, meta)
            ref = tracking.log_and_register(settings, tmp, MODEL_NAME, final.meta, alias="champion")
            cache = ws.models_dir / MODEL_NAME / f"v{ref.version}"  # what download_model would fetch
            if not cache.exists():
                cache.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        final_loss = meta["final_loss"] if meta["final_loss"] is not None else float("nan")
        result = TrainResult(ref.tag, n, int(held.sum()), cfg.epochs, step, final_loss,
                             time.perf_counter() - start, model.num_parameters(), losses)
        mlflow.log_metric("train_seconds", result.seconds)
    return result


def _lr_factor(step: int, total: int, warmup: int = 20) -> float:
    """Linear warm-up, then cosine decay to 0 over `total` steps."""
    if total <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + float(np.cos(np.pi * min(step, total) / total)))


def _log_epoch(losses: list[float], first_step: int, epoch: int, epoch_losses: list[float]) -> None:
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric("loss", v, now, first_step + i) for i, v in enumerate(epoch_losses)]
    metrics.append(Metric("epoch_loss", float(np.mean(epoch_losses)), now, epoch + 1))
    run = mlflow.active_run()
    for i in range(0, len(metrics), 900):  # log_batch takes at most 1000 metrics
        mlflow.MlflowClient().log_batch(run.info.run_id, metrics=metrics[i:i + 900])


def _log_loss_curve(losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.6, alpha=0.5, label="step")
    if len(losses) >= 10:
        w = max(5, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(w) / w, "valid")
        ax.plot(np.arange(w - 1, len(losses)), smooth, label=f"mean of {w}")
    ax.set(xlabel="step", ylabel="diffusion loss (MSE)", yscale="log", title="thumbnail UNet training")
    ax.legend()
    fig.tight_layout()
    mlflow.log_figure(fig, "loss_curve.png")
    plt.close(fig)


# --- generate ---------------------------------------------------------------------------------
@dataclass
class GenerateReport:
    missing: int        # items without a usable image before this run
    generated: int
    skipped: int        # already generated earlier (resume)
    failed: int
    model: str
    provenance: Path
    failures: dict[str, str] = field(default_factory=dict)  # item_id -> error

    def summary(self) -> str:
        text = (f"{self.generated:,} generated, {self.skipped:,} already there, {self.failed:,} failed "
                f"of {self.missing:,} items without an image ({self.model}); provenance -> {self.provenance}")
        if self.failures:
            first = next(iter(self.failures.items()))
            text += f"; e.g. {first[0]}: {first[1]}"
        return text


def load_thumbnailer(settings: Settings, encoder: TextImageEncoder | None = None) -> Thumbnailer:
    """The configured generator: the registered embedded model, or a pretrained pipeline."""
    from recsys import tracking

    cfg = settings.thumbnails
    device = resolve_device(settings.device)
    if cfg.backend == "pipeline":
        return pipeline_thumbnailer(cfg, device)
    try:
        folder, ref = tracking.download_model(settings, cfg.model_uri)
    except LookupError as exc:
        raise CheckpointError(f"no thumbnail model at {cfg.model_uri}: run `recsys thumbnails train` first "
                              f"(or set thumbnails.backend = 'pipeline')") from exc
    model = ThumbnailModel.load(folder, device, cfg.precision)
    return EmbeddedThumbnailer(model, load_encoder(settings, encoder), name=ref.name, version=ref.tag,
                               sampler=cfg.sampler, output_size=cfg.output_size)


_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def thumbnail_path(ws: Workspace, item_id: str) -> Path:
    """`<home>/thumbnails/<item_id>.png`; ids that are not filename-safe are hashed."""
    name = item_id if _SAFE.match(item_id) else "id-" + hashlib.sha1(item_id.encode()).hexdigest()[:20]
    return ws.thumbnails_dir / f"{name}.png"


def read_provenance(ws: Workspace) -> pl.DataFrame:
    path = ws.thumbnails_dir / PROVENANCE
    if not path.exists():
        return pl.DataFrame(schema=PROVENANCE_SCHEMA)
    return resolved_images(ws, pl.read_parquet(path))  # stored relative to the workspace, which may move


def _needs_image(settings: Settings, items: pl.DataFrame) -> np.ndarray:
    """True where an item has no usable original image (none, missing, unreadable, generated)."""
    out = np.ones(items.height, dtype=bool)
    rows = items.select(C.IMAGE_SOURCE, C.IMAGE_URI).iter_rows()
    for i, (source, uri) in enumerate(rows):
        if source == "original" and uri is not None:
            _, outcome = load_image(uri, settings.clip.max_image_pixels, settings.clip.min_image_side)
            out[i] = not is_ok(outcome)
    return out


def generate_thumbnails(settings: Settings, ws: Workspace, force: bool = False,
                        encoder: TextImageEncoder | None = None,
                        thumbnailer: Thumbnailer | None = None) -> GenerateReport:
    """Draw a thumbnail for every item without a usable image and record it (see module doc)."""
    cfg = settings.thumbnails
    items = load_table(ws, "items")
    need = _needs_image(settings, items)
    todo_items = items.filter(pl.Series(need))
    prov = read_provenance(ws)
    done_ok = {
        r[C.ITEM_ID] for r in prov.filter(pl.col("status") == "ok").iter_rows(named=True)
        if r[C.IMAGE_URI] and Path(r[C.IMAGE_URI]).is_file()
    }
    ids = todo_items[C.ITEM_ID].to_list()
    skip = set() if force else {i for i in ids if i in done_ok}
    work = todo_items.filter(~pl.col(C.ITEM_ID).is_in(list(skip)))
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    model_name = "-"
    if work.height:
        thumbnailer = thumbnailer or load_thumbnailer(settings, encoder)
        model_name = f"{thumbnailer.version}"
        prompts = _prompts(work, cfg.max_prompt_chars)
        work_ids = work[C.ITEM_ID].to_list()
        with bar("thumbnails", total=len(work_ids), unit="img") as b:
            for start in range(0, len(work_ids), cfg.generate_batch_size):
                batch = list(range(start, min(start + cfg.generate_batch_size, len(work_ids))))
                new = _generate_batch(settings, ws, thumbnailer, [work_ids[i] for i in batch],
                                      [prompts[i] for i in batch])
                rows.extend(new)
                failures.update({r[C.ITEM_ID]: r["error"] for r in new if r["status"] != "ok"})
                prov = _merge_provenance(prov, new)
                write_parquet(portable_images(ws, prov), ws.thumbnails_dir / PROVENANCE)  # resumable
                b.advance(len(batch), status=f"{len(failures)} failed")
    generated = sum(r["status"] == "ok" for r in rows)
    _apply_to_items(ws, items, need, prov)
    report = GenerateReport(int(need.sum()), generated, len(skip), len(failures), model_name,
                            ws.thumbnails_dir / PROVENANCE, failures)
    for item_id, err in list(failures.items())[:10]:
        log.warning("thumbnail for item %s failed: %s", item_id, err)
    if rows:
        _log_generate_run(settings, ws, report, thumbnailer)
    return report


def _generate_batch(settings: Settings, ws: Workspace, thumbnailer: Thumbnailer, ids: list[str],
                    prompts: list[str | PromptError]) -> list[dict[str, Any]]:
    """One batch; when the batch as a whole fails, items are retried one by one to isolate it."""
    cfg = settings.thumbnails
    seeds = [item_seed(settings.seed, i) for i in ids]
    now = datetime.now(UTC)

    def row(i: int, status: str, error: str | None, uri: str | None) -> dict[str, Any]:
        p = prompts[i]
        return {C.ITEM_ID: ids[i], C.IMAGE_URI: uri, "model_name": thumbnailer.name,
                "model_version": thumbnailer.version, "backend": cfg.backend, "seed": seeds[i],
                "guidance_scale": float(cfg.guidance_scale), "steps": int(cfg.steps),
                "sampler": thumbnailer.sampler, "prompt": p if isinstance(p, str) else None,
                "status": status, "error": error, "created_at": now}

    out: list[dict[str, Any]] = []
    ready = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    out += [row(i, "failed", str(prompts[i]), None) for i, p in enumerate(prompts) if not isinstance(p, str)]

    def draw(idx: list[int]) -> None:
        images = thumbnailer.generate([prompts[i] for i in idx], [seeds[i] for i in idx],
                                      cfg.steps, cfg.guidance_scale)
        for i, image in zip(idx, images, strict=True):
            path = thumbnail_path(ws, ids[i])
            with atomic_path(path, suffix=".png") as tmp:
                image.save(tmp, format="PNG")
            out.append(row(i, "ok", None, str(path)))

    if not ready:
        return out
    try:
        draw(ready)
    except Exception as batch_exc:
        log.debug("batch failed (%s); retrying item by item", batch_exc)
        for i in ready:
            try:
                draw([i])
            except Exception as exc:
                out.append(row(i, "failed", f"{type(exc).__name__}: {exc}", None))
    return out


def _merge_provenance(prov: pl.DataFrame, new: list[dict[str, Any]]) -> pl.DataFrame:
    fresh = pl.DataFrame(new, schema=PROVENANCE_SCHEMA)
    kept = prov.filter(~pl.col(C.ITEM_ID).is_in(fresh[C.ITEM_ID].to_list()))
    return pl.concat([kept.cast(PROVENANCE_SCHEMA), fresh]).sort(C.ITEM_ID)


def _apply_to_items(ws: Workspace, items: pl.DataFrame, need: np.ndarray, prov: pl.DataFrame) -> None:
    """Point items without a usable image at their generated PNG (one atomic table write)."""
    ok = {r[C.ITEM_ID]: r[C.IMAGE_URI] for r in prov.filter(pl.col("status") == "ok").iter_rows(named=True)
          if r[C.IMAGE_URI] and Path(r[C.IMAGE_URI]).is_file()}
    ids = items[C.ITEM_ID].to_list()
    uris, sources = items[C.IMAGE_URI].to_list(), items[C.IMAGE_SOURCE].to_list()
    changed = 0
    for i, item_id in enumerate(ids):
        if need[i] and item_id in ok and (uris[i] != ok[item_id] or sources[i] != "generated"):
            uris[i], sources[i] = ok[item_id], "generated"
            changed += 1
    if changed:
        updated = items.with_columns(pl.Series(C.IMAGE_URI, uris, dtype=pl.String),
                                     pl.Series(C.IMAGE_SOURCE, sources, dtype=items.schema[C.IMAGE_SOURCE]))
        save_table(ws, "items", updated)
        log.info("items: %d rows now point at generated thumbnails", changed)


def _log_generate_run(settings: Settings, ws: Workspace, report: GenerateReport, thumbnailer: Any) -> None:
    import mlflow

    from recsys import tracking

    with tracking.start_run(settings, "thumbnails", run_name="generate"):
        mlflow.log_params({"model": report.model, "backend": settings.thumbnails.backend,
                           "steps": settings.thumbnails.steps, "sampler": settings.thumbnails.sampler,
                           "guidance_scale": settings.thumbnails.guidance_scale})
        mlflow.log_metrics({"missing": report.missing, "generated": report.generated,
                            "skipped": report.skipped, "failed": report.failed})
        mlflow.log_artifact(str(report.provenance))


# --- evaluate ---------------------------------------------------------------------------------
def _placeholder(size: int) -> Image.Image:
    """What a shop shows for an item with no picture: a flat grey square."""
    return Image.new("RGB", (size, size), (200, 200, 200))


def evaluate_thumbnails(settings: Settings, ws: Workspace, encoder: TextImageEncoder | None = None,
                        thumbnailer: Thumbnailer | None = None) -> dict[str, float]:
    """CLIP scores and the retrieval effect of generated thumbnails (see module doc); logged to MLflow."""
    import mlflow

    from recsys import tracking

    cfg = settings.thumbnails
    encoder = load_encoder(settings, encoder)
    thumbnailer = thumbnailer or load_thumbnailer(settings, encoder)
    meta = getattr(getattr(thumbnailer, "model", None), "meta", {}) or {}
    items = load_table(ws, "items")
    imaged, images, prompts = _pairs(settings, items)
    ids = imaged[C.ITEM_ID].to_list()
    if len(ids) < 2:
        raise ValueError(f"{ws.table('items')}: need at least 2 items with a real image to evaluate "
                         f"thumbnails")
    fraction = float(meta.get("holdout", cfg.eval_holdout))
    split_seed = int(meta.get("split_seed", settings.seed))
    held = np.flatnonzero(in_holdout(ids, fraction, split_seed))
    seen_in_training = False
    if len(held) < 2:  # nothing held out: evaluate on training items and say so
        held = np.arange(len(ids))
        seen_in_training = cfg.backend == "embedded"
        log.warning("no held-out items: evaluating on items the model was trained on")
    held = held[:cfg.eval_items]
    others = np.setdiff1d(np.arange(len(ids)), held)[:max(cfg.eval_corpus - len(held), 0)]
    corpus_idx = np.concatenate([held, others])  # held-out items first: target i is row i

    rng = np.random.default_rng(settings.seed)
    real_vecs = encoder.encode_images([images[i] for i in corpus_idx])
    text_vecs = encoder.encode_texts([prompts[i] for i in held])
    h = len(held)
    out: dict[str, float] = {
        "eval_items": h, "corpus_items": len(corpus_idx), "k": cfg.recall_k,
        "seen_in_training": float(seen_in_training),
        "clip_real": float(paired_scores(real_vecs[:h], text_vecs).mean()),
        "clip_mismatched": float(mismatched_scores(real_vecs[:h], text_vecs, rng).mean()),
    }
    targets = np.arange(h)
    out["recall_real"] = recall_at_k(text_vecs, real_vecs, targets, cfg.recall_k)
    placeholder = encoder.encode_images([_placeholder(cfg.output_size)])
    no_image = real_vecs.copy()
    no_image[:h] = placeholder
    out["recall_no_image"] = recall_at_k(text_vecs, no_image, targets, cfg.recall_k)
    per_seed: list[dict[str, float]] = []
    first_fakes: list[Image.Image] = []
    for s in range(cfg.eval_seeds):
        seeds = [item_seed(settings.seed + 7919 * (s + 1), ids[i]) for i in held]
        fakes: list[Image.Image] = []
        with bar(f"evaluate (seed {s + 1}/{cfg.eval_seeds})", total=h, unit="img") as b:
            for start in range(0, h, cfg.generate_batch_size):
                chunk = slice(start, start + cfg.generate_batch_size)
                fakes += thumbnailer.generate([prompts[i] for i in held[chunk]], seeds[chunk], cfg.steps,
                                              cfg.guidance_scale)
                b.advance(len(seeds[chunk]))
        first_fakes = first_fakes or fakes
        gen_vecs = encoder.encode_images(fakes)
        with_gen = real_vecs.copy()
        with_gen[:h] = gen_vecs
        gen = float(paired_scores(gen_vecs, text_vecs).mean())
        per_seed.append({
            "clip_generated": gen,
            "clip_generated_mismatched": float(mismatched_scores(gen_vecs, text_vecs, rng).mean()),
            "gap": gen - out["clip_mismatched"],
            "recall_generated": recall_at_k(text_vecs, with_gen, targets, cfg.recall_k),
        })
    for key in per_seed[0]:
        values = np.array([p[key] for p in per_seed])
        out[key] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    span = out["clip_real"] - out["clip_mismatched"]
    out["gap_share_of_real"] = out["gap"] / span if abs(span) > 1e-9 else float("nan")
    catalogue = items.filter(pl.col(C.IMAGE_SOURCE) == "generated")
    if catalogue.height:
        out.update(_catalogue_scores(settings, encoder, catalogue, cfg.eval_corpus))
    with tracking.start_run(settings, "thumbnails", run_name="evaluate"):
        mlflow.log_params({"model": thumbnailer.version, "encoder": encoder.version,
                           "steps": cfg.steps, "guidance_scale": cfg.guidance_scale, "seeds": cfg.eval_seeds})
        mlflow.log_metrics({k: v for k, v in out.items() if np.isfinite(v)})
        mlflow.log_dict({"per_seed": per_seed, "summary": out}, "thumbnail_eval.json")
        mlflow.log_image(grid([[images[i] for i in held[:16]], first_fakes[:16]]),
                         artifact_file="samples/heldout_real_vs_generated.png")
    return out


def _catalogue_scores(settings: Settings, encoder: TextImageEncoder, generated: pl.DataFrame,
                      limit: int) -> dict[str, float]:
    """CLIP score of the thumbnails actually stored for the catalogue (from `generate`)."""
    _, pics, texts = _pairs(settings, generated.head(limit), source="generated")
    if len(pics) < 2:
        return {}
    img, txt = encoder.encode_images(pics), encoder.encode_texts(texts)
    rng = np.random.default_rng(settings.seed + 1)
    return {"catalogue_generated": float(len(pics)),
            "clip_catalogue_generated": float(paired_scores(img, txt).mean()),
            "clip_catalogue_mismatched": float(mismatched_scores(img, txt, rng).mean())}
