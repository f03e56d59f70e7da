"""Readiness with the real loader: what is missing is named by /readyz, /healthz stays 200."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serving_helpers import make_settings, wait_ready

from recsys.workspace import Workspace
from serving.app import create_app

pytestmark = pytest.mark.integration  # imports Feast, MLflow, LightGBM and torch (~10-40 s)


def test_missing_models_make_readyz_503_but_healthz_200(tmp_path) -> None:
    """With the real loader on an empty workspace: not ready, and it says why."""
    ws = Workspace.at(tmp_path / "empty")
    with TestClient(create_app(make_settings(ws.root))) as c:
        wait_ready(c, timeout=120)
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503
        reasons = " ".join(r.json()["reasons"])
        assert "catalogue" in reasons and "models" in reasons
        assert str(ws.root) not in r.text and "sqlite:" not in r.text  # the detail is in the server log
        r = c.get("/v1/users/u1/recommendations")
        assert r.status_code == 503 and r.json()["error"] == "unavailable" and str(ws.root) not in r.text
