"""`recsys serve`: the HTTP API (FastAPI on uvicorn), on 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from recsys.cli.common import console, settings_from


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    host: str = typer.Option(None, help="Interface to bind (serving.host; default 127.0.0.1)"),
    port: int = typer.Option(None, help="Port (serving.port; default 8000)"),
    workers: int = typer.Option(None, help="Processes, one SO_REUSEPORT socket each (serving.workers)"),
    alias: str = typer.Option(None, help="Registry alias of the models (serving.alias; default champion)"),
    poll_seconds: float = typer.Option(None, help="Reload when the alias moves, checked every N s (0: off)"),
) -> None:
    """Serve recommendations over HTTP: /v1/..., /docs, /healthz, /readyz, /metrics, /ui/users/{id}."""
    import uvicorn

    from serving.process import SETTINGS_ENV, server_env, supervise

    # a server's own lines (reloads, degraded feature store) are its output: keep them at INFO
    logging.getLogger("serving").setLevel(min(logging.getLogger("serving").getEffectiveLevel(), logging.INFO))
    settings = settings_from(ctx, **{"serving.host": host, "serving.port": port, "serving.workers": workers,
                                     "serving.alias": alias, "serving.poll_seconds": poll_seconds})
    cfg = settings.serving
    os.environ[SETTINGS_ENV] = server_env(settings)[SETTINGS_ENV]
    base = f"http://{cfg.host}:{cfg.port}"
    console.print(f"serving {Path(settings.home).resolve()} (models @{cfg.alias}) on {base}\n"
                  f"  {base}/docs  {base}/readyz  {base}/v1/users/<user_id>/recommendations?k=10  "
                  f"{base}/ui/users/<user_id>")
    if cfg.workers > 1:  # one SO_REUSEPORT socket per worker: the kernel spreads connections
        raise typer.Exit(supervise(cfg.host, cfg.port, cfg.workers))
    uvicorn.run("serving.app:app_from_env", factory=True, host=cfg.host, port=cfg.port, workers=cfg.workers,
                log_level="info", timeout_graceful_shutdown=20, access_log=False)
