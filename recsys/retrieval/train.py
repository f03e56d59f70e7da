"""Training data for the two-tower model and its training loop (pure: arrays in, model out).

The pipeline (`training/retrieval.py`) reads tables and features and calls `build_examples`
and `fit`; tests call them on small synthetic arrays.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch

from recsys.data import columns as C
from recsys.progress import bar
from recsys.retrieval.artifact import RetrievalModel
from recsys.retrieval.config import RetrievalConfig
from recsys.retrieval.model import TowerSpec, TwoTower, sampled_softmax_loss, user_buckets

log = logging.getLogger(__name__)
VALIDATION_CELLS = 4_000_000  # (user, item) scores per chunk of the per-epoch validation


@dataclass
class Examples:
    """One row per training click: who, which item (1-based index), what they clicked before."""

    bucket: np.ndarray     # (N,) int64 hashed user id
    item: np.ndarray       # (N,) int64 1-based item index
    history: np.ndarray    # (N, H) int32 1-based indices of the previous clicks, 0 = empty (int32:
                           # the largest array of a long log, and item indices fit)
    features: np.ndarray   # (N, F) float32 standardised user features (F may be 0)

    def __len__(self) -> int:
        return len(self.item)


def click_histories(clicks: pl.DataFrame, item_index: dict[str, int], length: int,
                    include_current: bool = False, dtype: type = np.int64) -> tuple[pl.DataFrame, np.ndarray]:
    """Per click, the 1-based indices of the same user's previous `length` clicked items.

    Point-in-time: a click's history holds only clicks strictly before it (ties by row order),
    unless `include_current`. Returns the rows sorted by (user, time) with their item index in
    `_idx`, and the (N, length) history matrix aligned to them, most recent first, 0 = empty.
    Vectorised with numpy shifts inside user groups (no per-row Python).
    """
    idx = pl.DataFrame({C.ITEM_ID: list(item_index), "_idx": list(item_index.values())},
                       schema={C.ITEM_ID: pl.String, "_idx": pl.Int64})
    df = (clicks.with_row_index("_row").join(idx, on=C.ITEM_ID, how="left")
          .with_columns(pl.col("_idx").fill_null(0))
          .sort([C.USER_ID, C.EVENT_TIMESTAMP, "_row"]))
    n = df.height
    items = df["_idx"].to_numpy().astype(np.int64)
    new_group = df.select((pl.col(C.USER_ID) != pl.col(C.USER_ID).shift(1)).fill_null(True))
    pos = np.arange(n)
    group_start = np.maximum.accumulate(np.where(new_group.to_series().to_numpy(), pos, 0)) if n else pos
    hist = np.zeros((n, length), dtype=dtype)
    first = 0 if include_current else 1
    for col, j in enumerate(range(first, first + length)):
        src = pos - j
        hist[:, col] = np.where(src >= group_start, items[np.maximum(src, 0)], 0)
    return df.drop("_row"), hist


def build_examples(clicks: pl.DataFrame, item_index: dict[str, int], history: int, buckets: int,
                   features: np.ndarray | None = None) -> Examples:
    """Training examples from click rows (user_id, item_id, event_timestamp).

    `features` (N, F), aligned to the rows of `clicks` as given, are the user's standardised
    behaviour features as of each click (point-in-time, from Feast).
    """
    unknown = clicks.filter(~pl.col(C.ITEM_ID).is_in(list(item_index)))
    if unknown.height:
        raise ValueError(f"{unknown.height} clicks name items outside the catalogue, e.g. "
                         f"{unknown[C.ITEM_ID].head(3).to_list()}")
    df, hist = click_histories(clicks.with_row_index("_orig"), item_index, history, dtype=np.int32)
    order = df["_orig"].to_numpy()
    feats = (np.zeros((df.height, 0), dtype=np.float32) if features is None
             else np.asarray(features, dtype=np.float32)[order])
    uniq = df.select(pl.col(C.USER_ID).unique())
    codes = pl.DataFrame({C.USER_ID: uniq.to_series(),
                          "_b": user_buckets(uniq.to_series().to_list(), buckets)})
    bucket = df.select(C.USER_ID).join(codes, on=C.USER_ID, how="left", maintain_order="left")["_b"]
    return Examples(bucket=bucket.to_numpy().astype(np.int64), item=df["_idx"].to_numpy().astype(np.int64),
                    history=hist, features=feats)


def item_log_q(items: np.ndarray, n_items: int, smoothing: float = 1.0) -> np.ndarray:
    """log p_j (index 0..n), p_j the share of training clicks on item j (additively smoothed)."""
    counts = np.bincount(items, minlength=n_items + 1).astype(np.float64) + smoothing
    counts[0] = smoothing
    return np.log(counts / counts.sum())


class RowAdam:
    """Adam for sparse embedding gradients that touches only the rows of the batch ("lazy"
    Adam, as SparseAdam) with less bookkeeping: one coalesce, index_select / index_copy of the
    moments, and an index_add of the update (torch's SparseAdam measured ~1.5x slower here)."""

    def __init__(self, params: Sequence[torch.nn.Parameter], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.lr, self.b1, self.b2, self.eps = lr, betas[0], betas[1], eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            g = p.grad.coalesce()
            rows, val = g.indices()[0], g.values()
            mr = m.index_select(0, rows).mul_(self.b1).add_(val, alpha=1 - self.b1)
            vr = v.index_select(0, rows).mul_(self.b2).addcmul_(val, val, value=1 - self.b2)
            m.index_copy_(0, rows, mr)
            v.index_copy_(0, rows, vr)
            p.index_add_(0, rows, (mr / c1).div_((vr / c2).sqrt_().add_(self.eps)), alpha=-self.lr)


@dataclass
class FitResult:
    best_epoch: int
    best_score: float
    epochs: list[dict] = field(default_factory=list)
    samples_per_s: float = 0.0


def fit(model: TwoTower, examples: Examples, log_p: np.ndarray, *, epochs: int, batch_size: int,
        learning_rate: float, uniform_negatives: int = 0, patience: int = 2, seed: int = 0,
        device: str = "cpu", validate: Callable[[TwoTower], float] | None = None,
        weight_decay: float = 1e-5, precision: str = "bfloat16") -> FitResult:
    """Train with in-batch sampled softmax + logQ correction; keep the best epoch.

    `validate(model) -> score` (e.g. validation Recall@K) runs after every epoch; training
    stops after `patience` epochs without improvement and the best weights are restored.
    Deterministic on CPU for a given seed (one thread). `precision="bfloat16"` runs the
    forward pass under autocast (matmuls 4x faster on CPUs with AVX512-BF16; the softmax and
    the loss stay float32).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.to(device).train()
    dense = torch.optim.AdamW(model.dense_parameters(), lr=learning_rate, weight_decay=weight_decay)
    sparse_params = model.sparse_parameters()
    sparse = RowAdam(sparse_params, lr=learning_rate) if sparse_params else None
    t = {name: torch.as_tensor(getattr(examples, name)).to(device)
         for name in ("bucket", "item", "history", "features")}
    log_p_t = torch.as_tensor(log_p, dtype=torch.float32, device=device)
    n_items = model.spec.n_items
    if precision not in ("float32", "bfloat16"):
        raise ValueError(f"precision must be float32 or bfloat16, got '{precision}'")
    autocast = precision == "bfloat16"
    device_type = torch.device(device).type
    n = len(examples)
    steps = math.ceil(n / batch_size)
    result = FitResult(best_epoch=-1, best_score=-math.inf)
    best_state = None
    seen = 0
    elapsed = 0.0
    stale = 0
    with bar("two-tower", total=epochs * n, unit="samples") as progress:
        for epoch in range(epochs):
            perm = torch.as_tensor(rng.permutation(n), device=device)
            start = time.perf_counter()
            total_loss = 0.0
            for step in range(steps):
                idx = perm[step * batch_size:(step + 1) * batch_size]
                items = t["item"][idx]
                uniq, target = torch.unique(items, return_inverse=True)
                with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=autocast):
                    u = model.user_tower(t["bucket"][idx], t["history"][idx], t["features"][idx])
                    v = model.item_tower(uniq)
                    neg = neg_log_q = None
                    if uniform_negatives:
                        neg_items = torch.randint(1, n_items + 1, (uniform_negatives,), device=device)
                        neg = model.item_tower(neg_items)
                        neg_log_q = torch.full((uniform_negatives,),
                                               math.log(uniform_negatives / n_items), device=device)
                log_q = log_p_t[uniq] + math.log(len(idx))
                loss = sampled_softmax_loss(u, v, target, log_q, model.spec.temperature, neg, neg_log_q)
                dense.zero_grad(set_to_none=True)
                if sparse is not None:
                    sparse.zero_grad()
                loss.backward()
                dense.step()
                if sparse is not None:
                    sparse.step()
                total_loss += float(loss.detach())
                progress.advance(len(idx), status=f"epoch {epoch + 1} loss {total_loss / (step + 1):.3f}")
            elapsed += time.perf_counter() - start
            seen += n
            row = {"epoch": epoch, "loss": total_loss / max(steps, 1)}
            if validate is not None:
                model.eval()
                row["val_score"] = float(validate(model))
                model.train()
                score = row["val_score"]
            else:
                score = -row["loss"]
            result.epochs.append(row)
            log.info("epoch %d: %s", epoch, row)
            if score > result.best_score:
                result.best_score, result.best_epoch = score, epoch
                best_state = copy.deepcopy(model.state_dict())
                stale = 0
            else:
                stale += 1
                if stale >= patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.samples_per_s = seen / max(elapsed, 1e-9)
    return result


@dataclass
class TrainedRetrieval:
    model: RetrievalModel
    fit: FitResult
    train_examples: int


def train_two_tower(items: pl.DataFrame, embeddings: pl.DataFrame, train_clicks: pl.DataFrame,
                    valid_clicks: pl.DataFrame | None, cfg: RetrievalConfig, *, seed: int = 0,
                    device: str = "cpu", user_features: pl.DataFrame | None = None,
                    feature_names: Sequence[str] = (), log_features: Sequence[str] = ()) -> TrainedRetrieval:
    """Encode the catalogue, build point-in-time examples, fit with early stopping on
    validation Recall@`cfg.eval_k`, and wrap the result as a `RetrievalModel` with its index.

    `user_features`, aligned with `train_clicks` rows, holds the user's behaviour features as of
    each click (columns `feature_names`); `log_features` are log1p'd first (counts).
    """
    from recsys.evaluation.metrics import ranking_metrics, top_k
    from recsys.retrieval.data import FeatureScaler, encode_items
    from recsys.retrieval.evaluate import recent_histories

    warm = set(train_clicks[C.ITEM_ID].unique().to_list())
    encoding, content = encode_items(items, embeddings, warm=warm, price_buckets=cfg.price_buckets,
                                     clip_dim=cfg.clip_dim or None)
    index = encoding.index
    names = list(feature_names)
    scaler = FeatureScaler.fit(user_features, names, log_features) if names and user_features is not None \
        else FeatureScaler([], [], [])
    feats = scaler.transform_frame(user_features) if scaler.names else None
    examples = build_examples(train_clicks, index, cfg.history, cfg.user_buckets, feats)
    spec = TowerSpec(n_items=len(encoding.item_ids), clip_dim=content.clip.shape[1],
                     n_user_features=len(scaler.names), user_buckets=cfg.user_buckets,
                     n_categories=len(encoding.categories) + 1, n_price_buckets=len(encoding.price_edges) + 2,
                     n_image_sources=len(encoding.image_sources) + 1, dim=cfg.dim, hidden=cfg.hidden,
                     temperature=cfg.temperature, item_id_dropout=cfg.item_id_dropout)
    torch.manual_seed(seed)
    net = TwoTower(spec, content)

    validate = None
    if valid_clicks is not None and valid_clicks.height:
        v = valid_clicks.filter(pl.col(C.ITEM_ID).is_in(list(index)))
        users = sorted(set(v[C.USER_ID].to_list()))
        hist_ids = recent_histories(train_clicks, users, cfg.history)
        hist = np.zeros((len(users), cfg.history), dtype=np.int64)
        for r, h in enumerate(hist_ids):
            hist[r, :len(h)] = [index[i] for i in h]
        # (row, column) of each validation click and of each seen (train) click of those users,
        # mapped in polars: a Python list of every train click's ids was the peak of a 10M-click
        # log (8M str objects, about 0.7 GB)
        user_row = pl.col(C.USER_ID).replace_strict(users, np.arange(len(users), dtype=np.int64),
                                                    default=None, return_dtype=pl.Int64)
        item_col = pl.col(C.ITEM_ID).replace_strict(list(index), np.fromiter(index.values(), np.int64) - 1,
                                                    return_dtype=pl.Int64)
        t_rows, t_items = (v.select(user_row).to_series().to_numpy(),
                           v.select(item_col).to_series().to_numpy())
        seen = train_clicks.select(user_row.alias("_r"), C.ITEM_ID).filter(pl.col("_r").is_not_null())
        s_rows, s_items = seen["_r"].to_numpy(), seen.select(item_col).to_series().to_numpy()
        del seen
        buckets = torch.as_tensor(user_buckets(users, cfg.user_buckets))
        vfeats = None
        if scaler.names:
            # features as of the end of training: each user's last training row
            last = (train_clicks.select(C.USER_ID, C.EVENT_TIMESTAMP).with_row_index("_r")
                    .group_by(C.USER_ID).agg(pl.col("_r").sort_by(C.EVENT_TIMESTAMP).last()))
            lookup = dict(zip(last[C.USER_ID].to_list(), last["_r"].to_list(), strict=True))
            vfeats = torch.as_tensor(np.stack([feats[lookup[u]] if u in lookup
                                               else np.zeros(len(scaler.names), np.float32) for u in users]))
        k = min(cfg.eval_k, spec.n_items)

        # users scored in chunks of ~VALIDATION_CELLS scores: memory follows the catalogue
        chunk = max(1, VALIDATION_CELLS // spec.n_items)
        s_order = np.argsort(s_rows, kind="stable")
        s_rows, s_items = s_rows[s_order], s_items[s_order]
        s_bounds = np.searchsorted(s_rows, np.arange(0, len(users) + chunk, chunk))

        def validate(model: TwoTower) -> float:
            ranked = np.empty((len(users), k), dtype=np.int64)
            with torch.no_grad():
                dev = model.item_clip.device
                items_t = model.all_item_vectors().T
                for c, s in enumerate(range(0, len(users), chunk)):
                    e = min(s + chunk, len(users))
                    u = model.user_tower(buckets[s:e].to(dev), torch.as_tensor(hist[s:e]).to(dev),
                                         None if vfeats is None else vfeats[s:e].to(dev))
                    scores = (u @ items_t).cpu().numpy()
                    sel = slice(s_bounds[c], s_bounds[c + 1])
                    ranked[s:e] = top_k(scores, k, s_rows[sel] - s, s_items[sel])
            recall = ranking_metrics(ranked, t_rows, t_items, ks=(k,), metrics=("recall",))[f"recall@{k}"]
            return float(np.nanmean(recall))

    result = fit(net, examples, item_log_q(examples.item, spec.n_items), epochs=cfg.epochs,
                 batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
                 uniform_negatives=cfg.uniform_negatives, patience=cfg.patience, seed=seed, device=device,
                 validate=validate, precision=cfg.precision)
    model = RetrievalModel.from_trained(net, encoding, scaler, cfg.history, index_kind=cfg.index,
                                        exact_below=cfg.exact_below)
    return TrainedRetrieval(model, result, len(examples))
