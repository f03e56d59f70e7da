"""The two-tower model: a user tower and an item tower scored by cosine over a temperature.

Item indices are 1-based everywhere in this module: row 0 of every item table is padding
(an empty history slot) and, in the item-id table, the shared "no id" vector that cold items
(no training clicks) and dropped-out ids use, so cold items are scored from content alone.

User tower:  [hashed user-id embedding (sparse) | mean of the CLIP vectors of the last clicks |
              standardised behaviour features]  -> MLP -> L2-normalised vector
Item tower:  [fused CLIP vector | category, price bucket, image_source embeddings |
              item-id embedding (sparse, with dropout)]  -> MLP -> L2-normalised vector
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TowerSpec:
    """Shapes of the model; saved beside the weights so a model folder rebuilds itself."""

    n_items: int                 # catalogue size (rows 1..n_items of the item tables)
    clip_dim: int
    n_user_features: int = 0
    user_buckets: int = 100_003
    n_categories: int = 1        # incl. 0 = unknown
    n_price_buckets: int = 1
    n_image_sources: int = 1
    dim: int = 64
    hidden: int = 128
    temperature: float = 0.05
    item_id_dropout: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)


def user_bucket(user_id: str, buckets: int) -> int:
    """Stable hash of a user id into `buckets` (unseen users still land somewhere)."""
    return zlib.crc32(user_id.encode("utf-8")) % buckets


def user_buckets(user_ids: Iterable[str], buckets: int) -> np.ndarray:
    return np.fromiter((user_bucket(u, buckets) for u in user_ids), dtype=np.int64)


@dataclass
class ItemContent:
    """Per-item inputs of the item tower, aligned to 1-based item indices (row 0 = padding)."""

    clip: np.ndarray          # (n+1, clip_dim) float32, L2-normalised fused CLIP vectors
    category: np.ndarray      # (n+1,) int64, 0 = unknown
    price_bucket: np.ndarray  # (n+1,) int64, 0 = unknown
    image_source: np.ndarray  # (n+1,) int64, 0 = unknown
    warm: np.ndarray          # (n+1,) bool: item has training clicks (keeps its id vector)

    def __post_init__(self) -> None:
        n = self.clip.shape[0]
        for name in ("category", "price_bucket", "image_source", "warm"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"ItemContent.{name} has shape {getattr(self, name).shape}, expected ({n},)")


class TwoTower(nn.Module):
    def __init__(self, spec: TowerSpec, content: ItemContent | None = None):
        super().__init__()
        self.spec = spec
        n = spec.n_items + 1
        d, h = spec.dim, spec.hidden
        # frozen content tables (buffers travel with the state dict)
        self.register_buffer("item_clip", torch.zeros(n, spec.clip_dim))
        self.register_buffer("item_category", torch.zeros(n, dtype=torch.long))
        self.register_buffer("item_price", torch.zeros(n, dtype=torch.long))
        self.register_buffer("item_source", torch.zeros(n, dtype=torch.long))
        self.register_buffer("item_warm", torch.zeros(n, dtype=torch.bool))
        if content is not None:
            self.set_content(content)
        # sparse id tables (SparseAdam): only the rows of a batch are touched per step
        self.user_id = nn.Embedding(spec.user_buckets, d, sparse=True)
        self.item_id = nn.Embedding(n, d, sparse=True)
        self.category = nn.Embedding(max(spec.n_categories, 1), 16)
        self.price = nn.Embedding(max(spec.n_price_buckets, 1), 8)
        self.source = nn.Embedding(max(spec.n_image_sources, 1), 4)
        nn.init.normal_(self.user_id.weight, std=0.05)
        nn.init.normal_(self.item_id.weight, std=0.05)
        self.user_mlp = nn.Sequential(
            nn.Linear(d + spec.clip_dim + spec.n_user_features, h), nn.ReLU(), nn.Linear(h, d))
        self.item_mlp = nn.Sequential(
            nn.Linear(spec.clip_dim + 16 + 8 + 4 + d, h), nn.ReLU(), nn.Linear(h, d))

    def set_content(self, content: ItemContent) -> None:
        n = self.spec.n_items + 1
        if content.clip.shape != (n, self.spec.clip_dim):
            raise ValueError(f"item CLIP table has shape {content.clip.shape}, "
                             f"expected ({n}, {self.spec.clip_dim})")
        self.item_clip.copy_(torch.as_tensor(content.clip, dtype=torch.float32))
        self.item_clip[0] = 0.0
        self.item_category.copy_(torch.as_tensor(content.category, dtype=torch.long))
        self.item_price.copy_(torch.as_tensor(content.price_bucket, dtype=torch.long))
        self.item_source.copy_(torch.as_tensor(content.image_source, dtype=torch.long))
        self.item_warm.copy_(torch.as_tensor(content.warm, dtype=torch.bool))

    def user_tower(self, buckets: torch.Tensor, history: torch.Tensor,
                   features: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) hashed ids, (B, H) 1-based item indices of recent clicks (0 = empty) -> (B, dim)."""
        # row 0 of item_clip is zero, so a sum over padded slots divided by the count of real
        # ones is the mean (10x faster than embedding_bag's padding_idx path on CPU)
        count = (history > 0).sum(dim=1, keepdim=True).clamp(min=1)
        pooled = F.embedding_bag(history, self.item_clip, mode="sum") / count
        parts = [self.user_id(buckets), pooled]
        if self.spec.n_user_features:
            if features is None:
                features = torch.zeros(len(buckets), self.spec.n_user_features, device=buckets.device)
            parts.append(features)
        return F.normalize(self.user_mlp(torch.cat(parts, dim=1)), dim=1)

    def item_tower(self, items: torch.Tensor) -> torch.Tensor:
        """(B,) 1-based item indices -> (B, dim). Cold items (and, in training, a random share
        of warm ones) use the shared "no id" row so the tower learns to score from content."""
        ids = torch.where(self.item_warm[items], items, torch.zeros_like(items))
        if self.training and self.spec.item_id_dropout > 0:
            drop = torch.rand(items.shape, device=items.device) < self.spec.item_id_dropout
            ids = torch.where(drop, torch.zeros_like(ids), ids)
        x = torch.cat([self.item_clip[items], self.category(self.item_category[items]),
                       self.price(self.item_price[items]), self.source(self.item_source[items]),
                       self.item_id(ids)], dim=1)
        return F.normalize(self.item_mlp(x), dim=1)

    @torch.no_grad()
    def all_item_vectors(self, batch: int = 65_536) -> torch.Tensor:
        """(n_items, dim) vectors of items 1..n in eval mode (row i-1 is item index i)."""
        was = self.training
        self.eval()
        out = [self.item_tower(torch.arange(s, min(s + batch, self.spec.n_items + 1),
                                            device=self.item_clip.device))
               for s in range(1, self.spec.n_items + 1, batch)]
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0, self.spec.dim)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [self.user_id.weight, self.item_id.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


def sampled_softmax_loss(user: torch.Tensor, item: torch.Tensor, target: torch.Tensor,
                         log_q: torch.Tensor, temperature: float,
                         neg_item: torch.Tensor | None = None,
                         neg_log_q: torch.Tensor | None = None) -> torch.Tensor:
    """In-batch sampled softmax with logQ correction (Yi et al., RecSys 2019).

    The candidates are the batch's distinct items (each once, so a row's positive never shows
    up again as its negative) plus optional uniform negatives:
    logits[i, j] = <u_i, v_j> / T - log q_j, with q_j the expected number of times item j is
    sampled as a candidate (B * p_j in-batch, M / n for M uniform negatives). Without the
    correction popular items, sampled more often than their share, are pushed down too hard.

    user: (B, d); item: (U, d) vectors of the distinct batch items; target: (B,) index of each
    row's item among them; log_q: (U,); neg_item: (M, d); neg_log_q: (M,).
    The correction rides in the matrix product as one extra column (one float32 pass over the
    B x U logits instead of three).
    """
    cand, lq = item.float(), log_q.float()
    if neg_item is not None:
        assert neg_log_q is not None
        cand = torch.cat([cand, neg_item.float()])
        lq = torch.cat([lq, neg_log_q.float()])
    u = F.pad(user.float() / temperature, (0, 1), value=1.0)
    v = torch.cat([cand, -lq[:, None]], dim=1)
    return F.cross_entropy(u @ v.T, target)
