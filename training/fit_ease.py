"""`recsys train ease`: EASE alone, without the two-tower (no item vectors needed).

The same clicks and split as `train retrieval` (catalogue items only, the A/B window left out),
the same λ search and registration (`training.ease.train_ease`), so an EASE version trained here
is interchangeable with the one `train retrieval` fits beside the two-tower.
"""

from __future__ import annotations

import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.data.splits import candidate_split, split_protocol
from recsys.data.tables import load_table
from recsys.workspace import Workspace
from training.ease import EaseResult, train_ease
from training.retrieval import read_clicks


def fit_ease(settings: Settings, ws: Workspace, promote: bool = True, force: bool = False) -> EaseResult:
    """Fit, evaluate on the validation part, register `models:/ease` (@champion when its λ scores
    at least the champion's on this split, or with `force`; @challenger without `promote`)."""
    clicks, click_only = read_clicks(ws, settings.evaluation.holdout_days)
    items = load_table(ws, "items", columns=[C.ITEM_ID])[C.ITEM_ID]
    clicks = clicks.filter(pl.col(C.ITEM_ID).is_in(items.implode()))
    if clicks.height == 0:
        raise ValueError(f"{ws.table('impressions')}: no clicks on catalogue items to fit EASE on")
    split = candidate_split(clicks, split_protocol(settings.retrieval.split, click_only), settings.seed)
    result, _ = train_ease(settings, ws, split, promote=promote, force=force)
    return result
