"""`recsys clip finetune`: contrastive training of the CLIP encoder on the catalogue.

CLIP's symmetric InfoNCE over (image, description) pairs of items that have an original image:
for a batch of n pairs with L2-normalised features I, T and learnable temperature
t = exp(logit_scale), logits = t * I @ T.T (n x n) and

    loss = (CE(logits, arange(n)) + CE(logits.T, arange(n))) / 2.

With `clip.pretrained` set the weights start from it (fine-tuning); otherwise the model (by
default the small `recsys-clip-tiny` config shipped with recsys) trains from scratch. Items are
split by a seeded hash of their id into train and validation; after every epoch the held-out
image->text and text->image Recall@1/5/10 go to MLflow (chance is k / n_val). The final weights
are registered as model `clip` with alias `champion`: the encoder `recsys backfill` uses.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.splits import hashed_fraction
from recsys.data.tables import load_table
from recsys.embeddings.encoder import (
    CHECKPOINT_FILE,
    create_clip,
    encode_text,
    model_image_size,
    save_checkpoint,
)
from recsys.embeddings.images import is_ok, load_image
from recsys.progress import bar, track
from recsys.runtime import configure_threads, resolve_device
from recsys.workspace import Workspace

log = logging.getLogger(__name__)
KS = (1, 5, 10)


@dataclass
class FinetuneResult:
    model_tag: str  # e.g. clip/v3
    model_uri: str  # models:/clip/3
    train_items: int
    val_items: int
    epochs: int
    seconds: float
    metrics: dict[str, float]  # held-out recall at the epoch kept, plus chance levels
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0

    def summary(self) -> str:
        m = self.metrics
        return (f"{self.model_tag} @champion: {self.train_items:,} train / {self.val_items:,} held-out "
                f"items, {self.epochs} epochs (kept epoch {self.best_epoch}); held-out i2t R@1/5/10 "
                f"{m['i2t_r1']:.3f}/{m['i2t_r5']:.3f}/{m['i2t_r10']:.3f}, t2i R@5 {m['t2i_r5']:.3f} "
                f"(chance R@5 {m['chance_r5']:.3f})")


def item_texts(items: pl.DataFrame) -> list[str]:
    """The text embedded for an item: its description, else its title."""
    desc = items[C.DESCRIPTION].to_list() if C.DESCRIPTION in items.columns else [None] * items.height
    titles = items[C.TITLE].to_list() if C.TITLE in items.columns else [None] * items.height
    return [(d if d and d.strip() else (t or "")) for d, t in zip(desc, titles, strict=True)]


def is_validation(item_ids: list[str], fraction: float, seed: int) -> np.ndarray:
    """Held-out items for Recall@k, by a seeded hash of the id (stable as the catalogue grows)."""
    return hashed_fraction(item_ids, fraction, salt=str(seed))


def recall_at_k(sim: np.ndarray, ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Fraction of rows whose own column (the diagonal) ranks in the top k of that row."""
    own = np.diag(sim)[:, None]
    rank = (sim > own).sum(axis=1)  # 0 = best; ties count in the row's favour
    return {k: float((rank < k).mean()) for k in ks}


def retrieval_metrics(image_feats: np.ndarray, text_feats: np.ndarray) -> dict[str, float]:
    sim = image_feats @ text_feats.T
    i2t, t2i = recall_at_k(sim), recall_at_k(sim.T)
    n = len(sim)
    out = {f"i2t_r{k}": v for k, v in i2t.items()} | {f"t2i_r{k}": v for k, v in t2i.items()}
    return out | {f"chance_r{k}": min(k / n, 1.0) for k in KS}


def _load_pairs(settings: Settings, ws: Workspace, preprocess: Any) -> tuple[list[str], Any, list[str], dict]:
    """Decode every original image once (bad files are skipped, counted by reason)."""
    import torch

    items = load_table(ws, "items")
    items = items.filter((pl.col(C.IMAGE_SOURCE) == "original") & pl.col(C.IMAGE_URI).is_not_null())
    texts_all = item_texts(items)
    ids, pixels, texts, outcomes = [], [], [], {}
    cfg = settings.clip
    rows = zip(items[C.ITEM_ID].to_list(), items[C.IMAGE_URI].to_list(), texts_all, strict=True)
    for item_id, uri, text in track(rows, "decode images", total=items.height, unit="img"):
        image, outcome = load_image(uri, cfg.max_image_pixels, cfg.min_image_side)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if not is_ok(outcome) or not text:
            continue
        ids.append(item_id)
        pixels.append(preprocess(image).to(torch.float16))  # half the memory; exact enough for input
        texts.append(text)
    if len(ids) < 4:
        raise ValueError(f"{ws.table('items')}: only {len(ids)} items have a readable original image and "
                         f"a description; CLIP fine-tuning needs at least 4 (image outcomes: {outcomes})")
    return ids, torch.stack(pixels), texts, outcomes


def _augment(pixels: Any, image_size: int, scale: float, generator: Any) -> Any:
    """Random resized crop (area in [scale, 1], aspect 3/4..4/3) and horizontal flip, per image.

    No colour jitter: colour is part of what descriptions say."""
    import torch
    import torch.nn.functional as F

    out = torch.empty((pixels.shape[0], 3, image_size, image_size), dtype=torch.float32)
    h, w = pixels.shape[-2:]
    for i in range(pixels.shape[0]):
        area = float(torch.empty(1).uniform_(scale, 1.0, generator=generator)) * h * w
        log_ratio = torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
        ratio = math.exp(float(log_ratio))
        ch = max(1, min(h, round(math.sqrt(area / ratio))))
        cw = max(1, min(w, round(math.sqrt(area * ratio))))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
        crop = pixels[i:i + 1, :, top:top + ch, left:left + cw].float()
        crop = F.interpolate(crop, size=(image_size, image_size), mode="bilinear", align_corners=False,
                             antialias=True)
        if bool(torch.rand(1, generator=generator) < 0.5):
            crop = crop.flip(-1)
        out[i] = crop[0]
    return out


def _evaluate(model: Any, pixels: Any, tokens: Any, batch: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    device = next(model.parameters()).device
    img, txt = [], []
    with torch.inference_mode():
        for s in range(0, len(pixels), batch):
            img.append(F.normalize(model.encode_image(pixels[s:s + batch].to(device).float()), dim=-1))
            txt.append(F.normalize(encode_text(model, tokens[s:s + batch].to(device)), dim=-1))
    model.train()
    return retrieval_metrics(torch.cat(img).cpu().numpy(), torch.cat(txt).cpu().numpy())


def _optimizer(model: Any, lr: float, weight_decay: float) -> Any:
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _selection_score(metrics: dict[str, float]) -> float:
    """What picks the epoch kept: held-out image→text and text→image Recall@5, averaged."""
    return (metrics["i2t_r5"] + metrics["t2i_r5"]) / 2


def finetune_clip(settings: Settings, ws: Workspace) -> FinetuneResult:
    """Train (or fine-tune) CLIP on the catalogue, log Recall@k per epoch, register `clip@champion`."""
    configure_threads(settings.threads)
    import mlflow
    import open_clip
    import torch
    import torch.nn.functional as F

    from recsys import tracking

    start = time.perf_counter()
    cfg = settings.clip
    device = resolve_device(settings.device)
    torch.manual_seed(settings.seed)
    model, _, preprocess = create_clip(cfg.model, cfg.pretrained, device)
    model = model.float().train()
    image_size = model_image_size(model)
    tokenizer = open_clip.get_tokenizer(cfg.model)

    ids, pixels, texts, outcomes = _load_pairs(settings, ws, preprocess)
    tokens = tokenizer(texts)
    val = is_validation(ids, cfg.val_fraction, settings.seed)
    if val.sum() < 2 or (~val).sum() < 2:  # tiny catalogues: force a usable split
        val = np.zeros(len(ids), dtype=bool)
        val[: max(2, len(ids) // 5)] = True
    tr_idx, va_idx = np.flatnonzero(~val), np.flatnonzero(val)
    batch = min(cfg.train_batch_size, len(tr_idx))
    steps_per_epoch = max(1, len(tr_idx) // batch)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, total_steps // 10)
    opt = _optimizer(model, cfg.learning_rate, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps)))
    )
    gen = torch.Generator().manual_seed(settings.seed)
    val_pixels, val_tokens = pixels[va_idx], tokens[va_idx]
    history: list[dict[str, float]] = []

    with tracking.start_run(settings, "clip", run_name="finetune") as run:
        tracking.log_lineage({"items": ws.table("items")})
        mlflow.log_params({
            "model": cfg.model, "pretrained": cfg.pretrained or "none (from scratch)", "epochs": cfg.epochs,
            "learning_rate": cfg.learning_rate, "batch_size": batch, "weight_decay": cfg.weight_decay,
            "aug_scale": cfg.aug_scale, "image_size": image_size, "seed": settings.seed,
            "train_items": len(tr_idx), "val_items": len(va_idx), "device": device,
            "parameters": sum(p.numel() for p in model.parameters()),
        })
        mlflow.log_dict(outcomes, "image_outcomes.json")
        before = _evaluate(model, val_pixels, val_tokens, 256)
        mlflow.log_metrics({f"val_{k}": v for k, v in before.items()}, step=0)
        best_score, best_epoch, best_state = -1.0, 0, None
        with bar("clip finetune", total_steps, unit="step") as b:
            for epoch in range(1, cfg.epochs + 1):
                perm = tr_idx[torch.randperm(len(tr_idx), generator=gen).numpy()]
                losses = []
                for s in range(steps_per_epoch):
                    idx = perm[s * batch:(s + 1) * batch]
                    images = _augment(pixels[idx], image_size, cfg.aug_scale, gen).to(device)
                    img = F.normalize(model.encode_image(images), dim=-1)
                    txt = F.normalize(encode_text(model, tokens[idx].to(device)), dim=-1)
                    logits = model.logit_scale.exp() * img @ txt.T
                    labels = torch.arange(len(idx), device=device)
                    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    with torch.no_grad():
                        model.logit_scale.clamp_(0, math.log(100))
                    losses.append(float(loss.detach()))
                    b.advance(1, status=f"epoch {epoch} loss {losses[-1]:.3f}")
                metrics = _evaluate(model, val_pixels, val_tokens, 256)
                record = {"epoch": epoch, "train_loss": float(np.mean(losses)),
                          "temperature": float(1 / model.logit_scale.detach().exp()), **metrics}
                history.append(record)
                mlflow.log_metrics({"train_loss": record["train_loss"], "temperature": record["temperature"],
                                    **{f"val_{k}": v for k, v in metrics.items()}}, step=epoch)
                log.info("epoch %d: loss %.3f, held-out i2t R@5 %.3f (chance %.3f)", epoch,
                         record["train_loss"], metrics["i2t_r5"], metrics["chance_r5"])
                score = _selection_score(metrics)
                if score > best_score:  # keep the best epoch's weights, not the last one's
                    best_score, best_epoch = score, epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                elif epoch - best_epoch >= cfg.patience:
                    log.info("no better held-out recall for %d epochs: stopping after epoch %d",
                             cfg.patience, epoch)
                    break
        final = max(history, key=_selection_score)
        if best_state is not None:
            model.load_state_dict(best_state)
        mlflow.log_metric("best_epoch", final["epoch"])
        with tempfile.TemporaryDirectory(dir=ws.models_dir, prefix=".clip-") as tmp:
            save_checkpoint(model, Path(tmp) / CHECKPOINT_FILE)
            meta = {"model": cfg.model, "pretrained": cfg.pretrained, "image_size": image_size,
                    "embed_dim": int(img.shape[1]), "epochs": cfg.epochs, "seed": settings.seed,
                    "train_items": len(tr_idx), "val_items": len(va_idx), "run_id": run.info.run_id,
                    "best_epoch": final["epoch"],
                    "metrics": {k: v for k, v in final.items() if k != "epoch"}}
            ref = tracking.log_and_register(settings, tmp, "clip", meta, alias="champion")
        mlflow.set_tag("recsys.model", ref.tag)
    return FinetuneResult(
        model_tag=ref.tag, model_uri=ref.uri, train_items=len(tr_idx), val_items=len(va_idx),
        epochs=len(history), seconds=time.perf_counter() - start,
        metrics={k: v for k, v in final.items() if k != "epoch"}, history=history,
        best_epoch=int(final["epoch"]),
    )
