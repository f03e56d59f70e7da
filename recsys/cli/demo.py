"""`recsys demo`: the whole pipeline on the embedded world (or MovieLens), then the server."""

from __future__ import annotations

from pathlib import Path

import typer

from recsys.cli.common import console, settings_from, workspace


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("demo")(demo)


DEMO_AB_DAYS = 7.0


def demo(
    ctx: typer.Context,
    data: str = typer.Option("world", help="world (the embedded simulated shop) or movielens"),
    path: Path = typer.Argument(None, help="MovieLens folder, with --data movielens"),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Start the server at the end"),
    port: int = typer.Option(None, help="Server port [serving.port; default 8000]"),
) -> None:
    """Generate (or import) data, fine-tune CLIP, draw thumbnails, backfill, build features, train the
    two-tower and the ranker, promote, evaluate A/B against popularity, then serve.

    Stages whose inputs have not changed since their last run are reused."""
    from training.demo import StageReport, run_demo

    settings = settings_from(ctx, **{"serving.port": port})
    if settings.evaluation.holdout_days <= 0:  # the demo ends with an offline A/B: keep its window out
        settings = settings_from(ctx, **{"serving.port": port, "evaluation.holdout_days": DEMO_AB_DAYS})
    home = Path(settings.home).resolve()
    console.print(f"[bold]recsys demo[/] on {data}{f' ({path})' if path else ''}; workspace {home}")
    total = 0.0

    def show(report: StageReport) -> None:
        nonlocal total
        total += report.seconds
        mark = "[dim]·[/]" if report.skipped else "[bold green]✓[/]"
        console.print(f"{mark} [bold]{report.name}[/]: {report.summary} [dim]({report.seconds:.1f} s)[/]")

    try:
        run_demo(settings, data=data, path=path, on_stage=show)
    except (ValueError, FileNotFoundError, LookupError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    ws = workspace(settings)  # after the run: a bad --data creates no workspace
    cfg = settings.serving
    base = f"http://{cfg.host}:{cfg.port}"
    console.print(
        f"\n[bold]pipeline done[/] in {total:.0f} s. Outputs under {home}\n"
        f"  models:      recsys models list\n"
        f"  MLflow UI:   recsys mlflow-ui   (then http://127.0.0.1:5000)\n"
        f"  A/B report:  {ws.reports_dir}"
    )
    if not serve:
        return
    from recsys.data import columns as C
    from recsys.data.tables import load_table

    user = load_table(ws, "impressions", columns=[C.USER_ID])[C.USER_ID][0]
    console.print(
        f"  try:         curl '{base}/v1/users/{user}/recommendations?k=10'\n"
        f"               {base}/docs   {base}/ui/users/{user}   {base}/metrics\n"
    )
    from recsys.cli.serve import serve as serve_command

    serve_command(ctx, host=None, port=cfg.port, workers=None, alias=None, poll_seconds=None)
