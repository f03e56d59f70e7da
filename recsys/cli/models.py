"""`recsys models list` and `recsys mlflow-ui`: what is registered, and where to look."""

from __future__ import annotations

import os
import subprocess
import sys

import typer
from rich.table import Table

from recsys.cli.common import console, settings_from


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["models"].command("list")(models_list)
    app.command("mlflow-ui")(mlflow_ui)


def models_list(ctx: typer.Context) -> None:
    """Registered models, their versions and aliases (champion, challenger)."""
    from recsys import tracking

    settings = settings_from(ctx)
    rows = tracking.list_models(settings)
    table = Table("model", "version", "aliases", "run")
    for r in rows:
        table.add_row(r["name"], str(r["version"]), ", ".join(r["aliases"]), r["run_id"] or "")
    console.print(table if rows else "no registered models yet")


def mlflow_ui(
    ctx: typer.Context,
    port: int = typer.Option(5000, help="Port on 127.0.0.1"),
) -> None:
    """Open the MLflow UI on 127.0.0.1 over this workspace's tracking store."""
    from recsys import tracking

    settings = settings_from(ctx)
    uri = tracking.setup_tracking(settings)  # re-points a moved workspace's store first
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        tracking.artifact_root(settings),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    console.print(f"MLflow UI on http://127.0.0.1:{port} (store {uri})")
    raise typer.Exit(subprocess.call(cmd, env=env))
