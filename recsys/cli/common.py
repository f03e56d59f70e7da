"""What every command shares: global options, settings, logging, progress and summaries."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from recsys.config import Settings, load_settings
from recsys.runtime import configure_threads
from recsys.workspace import Workspace

console = Console(stderr=True)


def main_options(
    ctx: typer.Context,
    home: Path = typer.Option(None, "--home", help="Workspace folder [env RECSYS_HOME; default ./.recsys]"),
    config: Path = typer.Option(
        None, "--config", help="Config file [env RECSYS_CONFIG; default ./recsys.toml]"
    ),
    seed: int = typer.Option(None, "--seed", help="Random seed for every step [env RECSYS_SEED]"),
    device: str = typer.Option(None, "--device", help="torch device: auto, cpu, cuda [env RECSYS_DEVICE]"),
    threads: int = typer.Option(None, "--threads", help="Threads per process [env RECSYS_THREADS]"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging"),
) -> None:
    """Global options; every setting can also come from recsys.toml or RECSYS_* variables."""
    import os

    if config is not None:
        os.environ["RECSYS_CONFIG"] = str(config)
    ctx.obj = {"home": home, "seed": seed, "device": device, "threads": threads}
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    # Libraries log to the root logger (open_clip does, at INFO, for every model it builds): keep
    # it at WARNING, and let our own packages say what happened and where outputs went.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    for ours in ("recsys", "features", "training", "serving"):
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.INFO)


def settings_from(ctx: typer.Context, **overrides: Any) -> Settings:
    """Effective settings: file < env < global flags < this command's flags."""
    flags = {k: v for k, v in (ctx.obj or {}).items() if v is not None}
    flags.update({k: v for k, v in overrides.items() if v is not None})
    settings = load_settings(**flags)
    configure_threads(settings.threads)
    return settings


def workspace(settings: Settings) -> Workspace:
    return Workspace.at(settings.home)


@contextmanager
def step(name: str) -> Iterator[dict[str, Any]]:
    """Time a step and print its one-line result (`info["summary"]`) when it ends."""
    info: dict[str, Any] = {}
    start = time.perf_counter()
    yield info
    elapsed = time.perf_counter() - start
    console.print(f"[bold green]✓[/] {name}: {info.get('summary', 'done')} [dim]({elapsed:.1f} s)[/]")


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)
