"""What every command shares: global options, settings, logging, progress and summaries."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

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
    memory_gib: float = typer.Option(None, "--memory-gib", help="Peak memory a heavy step may plan for, "
                                     "GiB [env RECSYS_MEMORY_GIB; default 80% of the machine's]"),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Our debug logs, and what libraries print (INFO logs, warnings, bars)"
    ),
) -> None:
    """Global options; every setting can also come from recsys.toml or RECSYS_* variables."""
    if config is not None:
        os.environ["RECSYS_CONFIG"] = str(config)
    ctx.obj = {"home": home, "seed": seed, "device": device, "threads": threads, "memory_gib": memory_gib}
    configure_output(verbose)


OURS = ("recsys", "features", "training", "serving")
# Libraries that set their logger's level themselves (MLflow from MLFLOW_LOGGING_LEVEL at import,
# alembic from MLflow's migrations), so the root logger's level alone does not quiet them.
THIRD_PARTY_LOGGERS = ("mlflow", "alembic", "feast", "httpx", "urllib3", "numba", "PIL", "matplotlib")
_verbose = False


def verbose() -> bool:
    """Whether this run was asked for `-v`: details beyond the one line per stage."""
    return _verbose


def configure_output(verbose: bool) -> None:
    """One line per stage (and our progress bars) on the console; with `verbose`, everything.

    Without `-v`: our own loggers and every library's at WARNING, MLflow's artifact download bars
    off, and warnings raised from library code (DeprecationWarning and the like) ignored; our own
    warnings stay. Environment variables set before the run win (`setdefault`)."""
    import warnings

    global _verbose
    _verbose = verbose
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if verbose else "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "0" if verbose else "1")
    # Libraries log to the root logger (open_clip does, at INFO, for every model it builds): keep
    # it at WARNING, INFO with -v (their DEBUG is noise: matplotlib scores every font it finds);
    # our packages go to DEBUG with -v (per-epoch losses, row counts, paths).
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    for ours in OURS:
        logging.getLogger(ours).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:
        return
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # `module` is a regex on the module a warning is attributed to: everything but our packages.
    # Libraries add filters of their own when imported (feast: "once" for DeprecationWarning), ahead
    # of this one, so the display hook drops what still comes from outside our packages too.
    warnings.filterwarnings("ignore", module=rf"(?!({'|'.join(OURS)})(\.|$))")
    warnings.showwarning = _only_our_warnings(warnings.showwarning)


def _only_our_warnings(show: Callable[..., None]) -> Callable[..., None]:
    root = Path(__file__).resolve().parents[2]  # the folder that holds recsys/, features/, ...
    ours = tuple(str(root / name) + os.sep for name in OURS)

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    file: TextIO | None = None, line: str | None = None) -> None:
        if str(Path(filename).resolve()).startswith(ours):
            show(message, category, filename, lineno, file, line)

    return showwarning


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


def say(line: str) -> None:
    """A plain informational line (e.g. a step's memory plan), dimmed, never parsed as markup."""
    console.print(line, style="dim", markup=False, highlight=False)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)
