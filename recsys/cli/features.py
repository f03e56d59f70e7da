"""`recsys features build|materialize|apply`: behaviour features into Feast's stores."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from recsys.cli.common import fail, say, settings_from, step, workspace
from recsys.config import Settings

ONLINE_STORE = typer.Option(None, help="sqlite or redis [features.online_store]")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    group = groups.get("features")
    if group is None:
        group = typer.Typer(
            help="Feast feature store: behaviour features, apply, materialize.", no_args_is_help=True
        )
        groups["features"] = group
        app.add_typer(group, name="features")
    group.command("build")(features_build)
    group.command("materialize")(features_materialize)
    group.command("apply")(features_apply)


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError as exc:
        raise fail(f"'{value}' is not an ISO timestamp (e.g. 2024-03-01 or 2024-03-01T12:00:00Z)") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def features_build(
    ctx: typer.Context,
    until: str = typer.Option(None, help="Last snapshot at this time (ISO; default: after the last event)"),
    online_store: str = ONLINE_STORE,
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (partitions of users "
                               "and items on the [ray] cluster, or a local instance)"),
) -> None:
    """Compute user and item behaviour features from the click log (polars, point-in-time),
    write the offline sources and `feast apply`. Records an MLflow run with lineage."""
    from features.jobs import build_features

    if engine not in ("local", "ray"):
        raise fail(f"--engine must be local or ray, got '{engine}'")
    run = build_features
    if engine == "ray":
        from features.jobs_ray import build_features_on_ray

        run = build_features_on_ray

    settings = settings_from(ctx, **{"features.online_store": online_store})
    with step("features build") as info:
        try:
            _plan_build(settings)
            result = run(settings, workspace(settings), until=_parse_time(until))
        except FileNotFoundError as exc:
            raise fail(str(exc)) from exc
        info["summary"] = result.summary()


def _plan_build(settings: Settings) -> None:
    """Say the build's memory plan (`recsys.memory`); stop before it starts if above the budget."""
    from recsys import memory
    from recsys.data import columns as C
    from recsys.data.tables import load_table

    ws = workspace(settings)
    if not ws.table("impressions").exists():
        return  # build_features names what is missing
    events = load_table(ws, "impressions", columns=[C.USER_ID]).height
    items = load_table(ws, "items", columns=[C.ITEM_ID]).height if ws.table("items").exists() else 0
    plan = memory.features_build(memory.budget_bytes(settings.memory_gib), events=events, items=items)
    say(plan.line())
    plan.check()


def features_materialize(
    ctx: typer.Context,
    end: str = typer.Option(None, help="Materialize rows up to this time (ISO; default: the newest)"),
    online_store: str = ONLINE_STORE,
    redis_url: str = typer.Option(None, help="host:port of Redis [features.redis_url]"),
) -> None:
    """Load the newest feature rows into the online store (sqlite, or Redis by config)."""
    from features.jobs import materialize
    from features.store import FeatureStoreUnavailable

    settings = settings_from(ctx, **{"features.online_store": online_store, "features.redis_url": redis_url})
    with step("features materialize") as info:
        try:
            result = materialize(settings, workspace(settings), end=_parse_time(end))
        except (FileNotFoundError, FeatureStoreUnavailable) as exc:
            raise fail(str(exc)) from exc
        info["summary"] = result.summary()


def features_apply(ctx: typer.Context) -> None:
    """Register the entities and feature views (`feast apply`) without computing anything."""
    from features.store import apply

    settings = settings_from(ctx)
    with step("features apply") as info:
        info["summary"] = f"registered {', '.join(apply(settings, force=True))}"
