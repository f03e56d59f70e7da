"""The seams of the request path: what serving calls on the recommender and on the online feature
reader, as Protocols.

The real parts (`recsys.recommender.Recommender`, `features.online.OnlineFeatures`) and the test
doubles (tests/serving/serving_helpers.py) implement the same Protocol with the same data shapes,
so a test that passes on a double says something about the real part
(tests/serving/test_serving_protocols.py compares their signatures). Candidate sources have
theirs beside the ranker: `recsys.ranking.dataset.CandidateSource`.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # the recommender module imports LightGBM and the ranking stack
    from recsys.recommender import Recommendation
    from recsys.rules import Rules


@runtime_checkable
class RecommendationModel(Protocol):
    """Top-k items for one user within the shop's rules (`recsys.recommender.Recommender`)."""

    versions: dict[str, str | None]  # "ranker", "retrieval", ... -> registry tag, e.g. "ranker/v3"

    def recommend(self, user_id: str, k: int = 10, user_features: Mapping[str, Any] | None = None,
                  exclude: Collection[str] = (), category: str | None = None,
                  as_of: datetime | None = None, history: Sequence[str] | None = None,
                  seen: Collection[str] | None = None, rules: Rules | None = None) -> Recommendation:
        """`Recommendation.items`: (item_id, score, rank) best first; `fallback`: why it is a
        popularity list (None when ranked); `reasons`: one per item. `user_features` is one
        `OnlineFeatureReader.user` row."""
        ...

    def set_available(self, item_ids: Sequence[str], available: bool) -> int:
        """Mark items in or out of stock (an atomic swap); returns how many are in the catalogue."""
        ...


@runtime_checkable
class OnlineFeatureReader(Protocol):
    """A user's features from the online store, per request (`features.online.OnlineFeatures`)."""

    def user(self, user_id: str) -> dict[str, Any]:
        """{'user_behaviour__<feature>': value} (Feast's full feature names; values None for an
        unknown user; `user_behaviour__last_clicked_items` most recent first). Raises when the
        store cannot be read (`features.online.FeatureStoreUnavailable` when it is down)."""
        ...

    def probe(self) -> None:
        """One cheap read; raises what `user` raises when the store cannot be read."""
        ...

    def replaced(self) -> bool:
        """Whether the store's file was replaced since this client opened it (False for servers)."""
        ...

    def reopened(self) -> OnlineFeatureReader:
        """A new client over the same store (a fresh connection); this one stays usable."""
        ...
