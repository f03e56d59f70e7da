"""A trained retrieval model as a folder of plain files, and its loader for serving and ranking.

Folder layout (what `recsys train retrieval` registers in MLflow as model `retrieval`):

    weights.pt     the TwoTower state dict (content tables included)
    model.json     TowerSpec, model_version, item encoding, user-feature scaler, history length
    items.parquet  exported item vectors: item_id, vector (list[f32]), warm, model_version
    index/         the ItemIndex over those vectors, stamped with model_version

`model_version` is a content hash of the weights, so the index, the exported vectors and the
weights can be checked against each other without knowing the registry's version number.
Serving calls `RetrievalModel.load(dir)` and never imports the training code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recsys.io import atomic_path, write_json, write_parquet
from recsys.retrieval.data import FeatureScaler, ItemEncoding
from recsys.retrieval.index import ItemIndex
from recsys.retrieval.model import TowerSpec, TwoTower, user_buckets


def _feature_column(columns: Sequence[str], name: str) -> pl.Expr:
    """A feature by its full name (`user_behaviour__clicks_7d`) or its bare one; null if absent."""
    bare = name.split("__", 1)[-1]
    for candidate in (name, bare):
        if candidate in columns:
            return pl.col(candidate).cast(pl.Float64).alias(name)
    return pl.lit(None, pl.Float64).alias(name)


def weights_version(model: torch.nn.Module) -> str:
    """Content hash of a state dict: the model version stamped on vectors and index."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return "tt-" + h.hexdigest()[:16]


@dataclass
class RetrievalModel:
    net: TwoTower
    encoding: ItemEncoding
    scaler: FeatureScaler
    history: int
    model_version: str
    item_vectors: np.ndarray        # (n, dim), row i = encoding.item_ids[i]
    index: ItemIndex

    @property
    def item_ids(self) -> list[str]:
        return self.encoding.item_ids

    @property
    def dim(self) -> int:
        return self.net.spec.dim

    @classmethod
    def from_trained(cls, net: TwoTower, encoding: ItemEncoding, scaler: FeatureScaler, history: int,
                     index_kind: str = "auto", exact_below: int = 50_000) -> RetrievalModel:
        net = net.to("cpu").eval()
        version = weights_version(net)
        vectors = net.all_item_vectors().numpy().astype(np.float32)
        index = ItemIndex.build(encoding.item_ids, vectors, version, kind=index_kind, exact_below=exact_below)
        return cls(net, encoding, scaler, history, version, vectors, index)

    # encoding users -------------------------------------------------------------------
    def history_indices(self, histories: Sequence[Sequence[str]] | None, n: int) -> np.ndarray:
        """(n, H) 1-based item indices of each user's most recent clicks (unknown ids skipped)."""
        out = np.zeros((n, self.history), dtype=np.int64)
        if histories is None:
            return out
        pos = self._item_pos
        for r, items in enumerate(histories):
            known = [pos[i] for i in (items or ()) if i in pos][: self.history]
            out[r, :len(known)] = known
        return out

    @property
    def _item_pos(self) -> dict[str, int]:
        if not hasattr(self, "_pos_cache"):
            self._pos_cache = self.encoding.index
        return self._pos_cache

    @torch.no_grad()
    def user_vectors(self, user_ids: Sequence[str], histories: Sequence[Sequence[str]] | None = None,
                     features: Sequence[Mapping[str, object] | None] | np.ndarray | pl.DataFrame | None = None
                     ) -> np.ndarray:
        """(U, dim) L2-normalised user vectors.

        histories: per user, item ids of recent clicks, MOST RECENT FIRST (e.g. Feast's
        last-clicked list); features: per user a dict of behaviour features by name (Feast
        online features; missing names count as average), a polars frame with those columns
        (missing columns count as average), or a raw (U, F) array in `scaler.names` order.
        """
        n = len(user_ids)
        if histories is not None and len(histories) != n:
            raise ValueError(f"{n} users but {len(histories)} histories")
        buckets = torch.as_tensor(user_buckets(user_ids, self.net.spec.user_buckets))
        hist = torch.as_tensor(self.history_indices(histories, n))
        if features is None:
            feats = np.zeros((n, len(self.scaler.names)), dtype=np.float32)
        elif isinstance(features, pl.DataFrame):
            if features.height != n:
                raise ValueError(f"{n} users but {features.height} feature rows")
            cols = [_feature_column(features.columns, c) for c in self.scaler.names]
            feats = self.scaler._scale(features.select(cols).to_numpy()) if cols else \
                np.zeros((n, 0), dtype=np.float32)
        elif isinstance(features, np.ndarray):
            feats = self.scaler._scale(features.astype(np.float64))
        else:
            if len(features) != n:
                raise ValueError(f"{n} users but {len(features)} feature rows")
            feats = self.scaler.transform_dicts(features)
        vec = self.net.user_tower(buckets, hist, torch.as_tensor(feats))
        return vec.numpy().astype(np.float32)

    def recommend(self, user_ids: Sequence[str], k: int, histories: Sequence[Sequence[str]] | None = None,
                  features: Sequence[Mapping[str, object] | None] | np.ndarray | None = None,
                  exclude: Sequence[set[str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k candidate ids and scores per user (see `ItemIndex.search`)."""
        return self.index.search(self.user_vectors(user_ids, histories, features), k, exclude)

    # persistence ----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "weights.pt", suffix=".pt") as tmp:
            torch.save(self.net.state_dict(), tmp)
        write_parquet(pl.DataFrame({
            "item_id": self.item_ids,
            "vector": [row.tolist() for row in self.item_vectors],
            "warm": self.net.item_warm[1:].numpy().tolist(),
            "model_version": [self.model_version] * len(self.item_ids),
        }, schema={"item_id": pl.String, "vector": pl.List(pl.Float32), "warm": pl.Boolean,
                   "model_version": pl.String}), directory / "items.parquet")
        self.index.save(directory / "index")
        write_json({"format": 1, "model_version": self.model_version, "spec": self.net.spec.to_dict(),
                    "history": self.history, "encoding": self.encoding.to_dict(),
                    "scaler": self.scaler.to_dict()}, directory / "model.json")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RetrievalModel:
        """Load a model folder (e.g. from `tracking.download_model(settings,
        "models:/retrieval@champion")`); the index must carry the same model version."""
        directory = Path(directory)
        meta_path = directory / "model.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{meta_path} does not exist: not a retrieval model folder")
        meta = json.loads(meta_path.read_text())
        spec = TowerSpec(**meta["spec"])
        net = TwoTower(spec)
        net.load_state_dict(torch.load(directory / "weights.pt", map_location="cpu", weights_only=True))
        net.eval()
        version = meta["model_version"]
        if weights_version(net) != version:
            raise ValueError(f"{directory}: weights.pt does not match model.json's version {version}")
        items = pl.read_parquet(directory / "items.parquet")
        if items.height and items["model_version"][0] != version:
            raise ValueError(f"{directory}: items.parquet holds vectors of model "
                             f"{items['model_version'][0]}, expected {version}")
        enc = meta["encoding"]
        encoding = ItemEncoding(item_ids=items["item_id"].to_list(), categories=enc["categories"],
                                price_edges=enc["price_edges"], image_sources=enc["image_sources"],
                                clip_components=enc.get("clip_components"), clip_mean=enc.get("clip_mean"))
        vectors = np.asarray(items["vector"].to_list(), dtype=np.float32).reshape(items.height, spec.dim)
        scaler = FeatureScaler(**meta["scaler"])
        index = ItemIndex.load(directory / "index", expected_version=version)
        return cls(net, encoding, scaler, int(meta["history"]), version, vectors, index)
