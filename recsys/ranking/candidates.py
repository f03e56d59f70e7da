"""Candidate sources for the ranker: the registered two-tower model, or CLIP profiles.

Both present the `CandidateSource` shape (`recsys.ranking.dataset`): item vectors aligned to
ItemTable rows and a `user_vectors(user_ids, history, user_features)` that embeds users from
their recent clicks. The ranker's training (hard negatives, `tt_score`/`tt_rank`) and the
`Recommender` (stage 1) use the same object, so both see the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from recsys.ranking.features import ItemTable, user_profiles

CLIP_PROFILE = "clip-profile"


class ClipProfileSource:
    """Content-based retrieval: the user's mean recent-click CLIP vector against item vectors.

    Needs no training; used where no two-tower is registered (`retrieval_uri="clip-profile"`).
    """

    wants_user_features = False

    def __init__(self, items: ItemTable):
        if not items.emb.shape[1]:
            raise FileNotFoundError("clip-profile retrieval needs the item_embeddings table "
                                    "(`recsys backfill`)")
        self.version = CLIP_PROFILE
        self.item_rows = np.flatnonzero(items.has_emb)
        self.item_vectors = items.emb[self.item_rows]
        self._items = items

    def user_vectors(self, user_ids: Sequence[str], history: np.ndarray,
                     user_features: pl.DataFrame | None = None) -> np.ndarray:
        return user_profiles(history, self._items).clip


class TwoTowerSource:
    """The registered two-tower model (`recsys.retrieval`) seen as a candidate source."""

    wants_user_features = True

    def __init__(self, model: Any, items: ItemTable, version: str):
        self.model = model
        self.version = version
        ids = [str(i) for i in model.item_ids]
        rows = items.rows(ids)
        ok = rows >= 0
        self.item_rows = rows[ok]
        self.item_vectors = np.asarray(model.item_vectors, np.float32)[ok]
        self._items = items

    def user_vectors(self, user_ids: Sequence[str], history: np.ndarray,
                     user_features: pl.DataFrame | None = None) -> np.ndarray:
        ids = self._items.ids
        # most recent first, as the two-tower was trained
        hist = [[str(ids[r]) for r in row[::-1] if r >= 0] for row in np.asarray(history)]
        feats = None
        if user_features is not None and user_features.height == len(user_ids):
            # the scaler may know the features with or without the view prefix: offer both
            feats = [{**row, **{f"user_behaviour__{k}": v for k, v in row.items()}}
                     for row in user_features.iter_rows(named=True)]
        return np.asarray(self.model.user_vectors(list(user_ids), hist, feats), np.float32)


def load_candidate_source(settings: Any, uri: str, items: ItemTable) -> ClipProfileSource | TwoTowerSource:
    """`clip-profile`, or a registered retrieval model (`models:/retrieval@champion`, `.../3`)."""
    if uri == CLIP_PROFILE:
        return ClipProfileSource(items)
    from recsys import tracking
    from recsys.retrieval.artifact import RetrievalModel

    folder, ref = tracking.download_model(settings, uri)
    return TwoTowerSource(RetrievalModel.load(folder), items, ref.tag)
