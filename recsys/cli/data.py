"""`recsys config`, `recsys generate`, `recsys import ...`, `recsys data ...`: getting data into
the workspace, and the versions every write of a table keeps."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from recsys.cli.common import console, settings_from, step, workspace

# shared by every import command
QUARANTINE = typer.Option(
    None, "--quarantine/--strict", help="Set bad rows aside or fail [imports.quarantine; default: set aside]"
)
REPLACE = typer.Option(
    False, "--replace", help="Replace the whole table with the file's rows (default: upsert by key)"
)
ALLOW_PARTIAL = typer.Option(
    False, "--allow-partial",
    help="Store the good rows even when more than imports.max_bad_share of the rows are bad",
)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["config"].command("show")(config_show)
    app.command("generate")(generate)
    imports = groups["import"]
    imports.command("movielens")(import_movielens)
    for table in ("items", "users", "impressions"):
        imports.command(table)(_import_table(table))
    groups["data"].command("history")(data_history)
    groups["data"].command("rollback")(data_rollback)


def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration (file < env < flags) as JSON; secrets show as ***."""
    from recsys.config import masked

    settings = settings_from(ctx)
    typer.echo(json.dumps(masked(settings.model_dump(mode="json")), indent=2))


def generate(
    ctx: typer.Context,
    items: int = typer.Option(None, help="Number of items [default from config: 2000]"),
    users: int = typer.Option(None, help="Number of users [default 5000]"),
    days: int = typer.Option(None, help="Days of logged traffic [default 28]"),
    impressions: int = typer.Option(None, help="Target number of logged impressions [default 500k]"),
    images: bool = typer.Option(None, "--images/--no-images", help="Render item images"),
) -> None:
    """Generate the embedded world: a seeded simulated shop with items, users and a click log."""
    import time

    from recsys.data.tables import remove_import_temps
    from recsys.data.world import generate_world

    settings = settings_from(
        ctx,
        **{
            "world.items": items,
            "world.users": users,
            "world.days": days,
            "world.impressions": impressions,
            "world.images": images,
        },
    )
    ws = workspace(settings)
    with step("generate") as info:
        remove_import_temps(ws, ["items", "users", "impressions"], time.time())  # of a killed generate
        result = generate_world(settings.world, settings.seed, ws)
        info["summary"] = result.summary()


def import_movielens(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="Folder in the ml-100k or ml-latest-small layout"),
    min_rating: float = typer.Option(None, help="Ratings >= this become clicks [default: every rating]"),
    quarantine: bool = QUARANTINE,
    replace: bool = REPLACE,
    allow_partial: bool = ALLOW_PARTIAL,
) -> None:
    """Import MovieLens (ratings become clicks; posters become item images); upserts by key."""
    from recsys.data.movielens import import_movielens as run

    settings = settings_from(ctx, **{"imports.min_rating": min_rating, "imports.quarantine": quarantine})
    ws = workspace(settings)
    with step("import movielens") as info:
        reports = run(
            path, ws, min_rating=settings.imports.min_rating, quarantine_bad=settings.imports.quarantine,
            replace=replace, max_bad_share=None if allow_partial else settings.imports.max_bad_share,
        )
        for report in reports:
            console.print(report.summary())
        info["summary"] = ", ".join(f"{r.table} {r.stored:,}" for r in reports)


def _import_table(table: str):
    def command(
        ctx: typer.Context,
        path: Path = typer.Argument(..., help="Parquet or CSV file in the contract's columns, or a folder "
                                    "of parquet parts (impressions: the server's events folder)"),
        quarantine: bool = QUARANTINE,
        replace: bool = REPLACE,
        allow_partial: bool = ALLOW_PARTIAL,
    ) -> None:
        from recsys.data.tables import import_file

        settings = settings_from(ctx, **{"imports.quarantine": quarantine})
        with step(f"import {table}") as info:
            report = import_file(
                workspace(settings), table, path, quarantine_bad=settings.imports.quarantine, replace=replace,
                max_bad_share=None if allow_partial else settings.imports.max_bad_share,
            )
            info["summary"] = report.summary()

    command.__name__ = f"import_{table}"
    command.__doc__ = (
        f"Validate your own {table} table (parquet or CSV) and store it: upserted by key (new rows "
        "added, rows with a stored key replaced, nothing else touched) unless --replace. The "
        "previous table stays a version (`recsys data history`)."
    )
    return command


TABLE = typer.Argument(..., help="items, users, impressions or item_embeddings")


def _check_table(table: str) -> None:
    from recsys.data.tables import TABLES

    if table not in TABLES:
        raise typer.BadParameter(f"unknown table '{table}'; expected one of {', '.join(TABLES)}")


def data_history(ctx: typer.Context, table: str = TABLE) -> None:
    """List the kept versions of a table (rows, size, time, what wrote it; * is the live one)."""
    from recsys.data import history

    _check_table(table)
    ws = workspace(settings_from(ctx))
    kept = history.versions(ws, table)
    for version in kept:
        typer.echo(version.line())
    if not history.live_is_tracked(ws, table):
        typer.echo(f"  the stored {table} table was written before this history: the next write or "
                   "rollback keeps it as a version")
    if not kept and not ws.table(table).exists():
        typer.echo(f"no versions of {table} yet")


def data_rollback(
    ctx: typer.Context,
    table: str = TABLE,
    version: str = typer.Argument(..., help="Version to make live again, e.g. 3 or v3"),
) -> None:
    """Make an earlier version of a table live again (the current one stays in the history).
    Features and models built from the other version are not rebuilt: rerun those steps."""
    from recsys.data import history

    _check_table(table)
    number = version.lower().removeprefix("v")
    if not number.isdigit():
        raise typer.BadParameter(f"version '{version}' is not a number such as 3 or v3")
    ws = workspace(settings_from(ctx))
    with step(f"data rollback {table}") as info:
        restored = history.rollback(ws, table, int(number))
        info["summary"] = (f"{table} is v{restored.version} again ({restored.rows:,} rows, written "
                           f"{restored.written_at[:19]} UTC: {restored.note})")
