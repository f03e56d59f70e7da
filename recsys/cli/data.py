"""`recsys config`, `recsys generate`, `recsys import ...`: getting data into the workspace."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from recsys.cli.common import console, settings_from, step, workspace

# shared by every import command
QUARANTINE = typer.Option(
    None, "--quarantine/--strict", help="Set bad rows aside or fail [imports.quarantine; default: set aside]"
)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["config"].command("show")(config_show)
    app.command("generate")(generate)
    imports = groups["import"]
    imports.command("movielens")(import_movielens)
    for table in ("items", "users", "impressions"):
        imports.command(table, help=f"Validate your own {table} table (parquet or CSV) and store it.")(
            _import_table(table)
        )


def config_show(ctx: typer.Context) -> None:
    """Print the effective configuration (file < env < flags) as JSON."""
    settings = settings_from(ctx)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


def generate(
    ctx: typer.Context,
    items: int = typer.Option(None, help="Number of items [default from config: 2000]"),
    users: int = typer.Option(None, help="Number of users [default 5000]"),
    days: int = typer.Option(None, help="Days of logged traffic [default 28]"),
    impressions: int = typer.Option(None, help="Target number of logged impressions [default 500k]"),
    images: bool = typer.Option(None, "--images/--no-images", help="Render item images"),
) -> None:
    """Generate the embedded world: a seeded simulated shop with items, users and a click log."""
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
        result = generate_world(settings.world, settings.seed, ws)
        info["summary"] = result.summary()


def import_movielens(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="Folder in the ml-100k or ml-latest-small layout"),
    min_rating: float = typer.Option(None, help="Ratings >= this become clicks [default: every rating]"),
    quarantine: bool = QUARANTINE,
) -> None:
    """Import MovieLens (ratings become clicks; posters become item images)."""
    from recsys.data.movielens import import_movielens as run

    settings = settings_from(ctx, **{"imports.min_rating": min_rating, "imports.quarantine": quarantine})
    ws = workspace(settings)
    with step("import movielens") as info:
        reports = run(
            path, ws, min_rating=settings.imports.min_rating, quarantine_bad=settings.imports.quarantine
        )
        for report in reports:
            console.print(report.summary())
        info["summary"] = ", ".join(f"{r.table} {r.kept:,}" for r in reports)


def _import_table(table: str):
    def command(
        ctx: typer.Context,
        path: Path = typer.Argument(..., help="Parquet or CSV file in the contract's columns"),
        quarantine: bool = QUARANTINE,
    ) -> None:
        from recsys.data.tables import import_file

        settings = settings_from(ctx, **{"imports.quarantine": quarantine})
        with step(f"import {table}") as info:
            report = import_file(workspace(settings), table, path, quarantine_bad=settings.imports.quarantine)
            info["summary"] = report.summary()

    command.__name__ = f"import_{table}"
    return command
