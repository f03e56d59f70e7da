"""The closed loop of off-policy evaluation: the server explores and logs its propensities, the
clients' events are imported, and `evaluate ab` estimates other policies from them.

A small embedded world with real trained models (the serving benchmark's builder: Feast features,
two-tower, EASE, LightGBM ranker in MLflow); clicks are drawn from the world's true click model.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from recsys.cli import app as cli
from recsys.data.truth import WorldTruth
from recsys.workspace import Workspace
from serving.app import create_app

pytestmark = pytest.mark.integration  # Feast, MLflow, LightGBM, torch and the server, for real
SIZES = {"items": 200, "users": 150, "impressions": 5_000}


def _wait_ready(client: TestClient) -> None:
    for _ in range(3000):
        if client.get("/readyz").json()["reasons"] != ["loading"]:
            return
        import time

        time.sleep(0.1)
    raise TimeoutError("the server never loaded its models")


def test_served_events_are_imported_and_evaluated_off_policy(tmp_path: Path, serving_bench: ModuleType
                                                              ) -> None:
    bench = serving_bench
    home = tmp_path / "ws"
    bench.build_world(home, **SIZES)
    settings = bench.bench_settings(home, *SIZES.values()).model_copy(deep=True)
    settings.serving.exploration, settings.serving.temperature = "softmax", 1.0
    settings.serving.event_flush_seconds = 0.05
    ws = Workspace.at(home)
    truth = WorldTruth.load(ws)
    rng = np.random.default_rng(0)
    served = clicks = 0
    with TestClient(create_app(settings)) as client:
        _wait_ready(client)
        for _ in range(4):
            for user in truth.user_ids.astype(str):
                body = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
                items = body["items"]
                assert body["policy"].endswith(":softmax") or body["fallback"] == "popular"
                p = truth.click_probability([user] * len(items), [it["item_id"] for it in items],
                                            np.arange(len(items)))
                clicked = rng.random(len(items)) < p
                events = [{"request_id": body["request_id"], "user_id": user, "item_id": it["item_id"],
                           "position": r, "clicked": bool(c), "propensity": it["propensity"],
                           "slot_propensities": it["slot_propensities"], "policy": body["policy"]}
                          for r, (it, c) in enumerate(zip(items, clicked, strict=True))]
                assert client.post("/v1/events", json={"events": events}).status_code == 202
                served, clicks = served + len(events), clicks + int(clicked.sum())
    assert clicks > 0

    runner = CliRunner()
    imported = runner.invoke(cli, ["--home", str(home), "import", "impressions", str(ws.events_dir)])
    assert imported.exit_code == 0, imported.output
    ab = runner.invoke(cli, ["--home", str(home), "evaluate", "ab", "--control", "models:/ranker@champion",
                             "--treatment", "popular", "--holdout-days", "1", "--bootstrap", "100",
                             "--no-track"], env={"RECSYS_SERVING__TEMPERATURE": "1.0"})
    assert ab.exit_code == 0, ab.output
    report = sorted(ws.reports_dir.glob("ab-*"))[-1]
    summary = json.loads((report / "summary.json").read_text())
    assert f"{served:,} held-out rows" in summary["window"]  # the window is exactly the served traffic
    estimators = {o["estimator"]: o for o in summary["offline"]}
    assert {"snips", "pbm_snips", "pbm_dr"} <= set(estimators)
    # the server explored around the ranker: its item-level support is broad
    assert estimators["pbm_snips"]["ess"]["control"] > 300
    assert 0 < estimators["pbm_snips"]["control"]["estimate"] < 1
    # the ranker is estimated as the server ran it (softmax at its temperature), not its top 10
    md = (report / "report.md").read_text()
    assert "evaluated as the server runs it, Plackett-Luce at temperature 1" in md
