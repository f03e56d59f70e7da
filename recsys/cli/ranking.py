"""`recsys train ranker` and `recsys recommend`: the ranker, and batch recommendations."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from recsys.cli.common import console, fail, say, settings_from, step, verbose, workspace


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["train"].command("ranker")(train_ranker)
    app.command("recommend")(recommend)


def train_ranker(
    ctx: typer.Context,
    logs: Path = typer.Option(None, "--logs", help="Click log (parquet/CSV; impressions contract or "
                              "click-only) [default: the workspace's impressions table]"),
    promote: bool = typer.Option(False, "--promote", help="Make it @champion if it beats the champion "
                                 "on validation NDCG@10 (else @challenger)"),
    retrieval: str = typer.Option("models:/retrieval@champion", "--retrieval",
                                  help="Two-tower for hard negatives and features, 'clip-profile' or 'none'"),
    rounds: int = typer.Option(None, help="Boosting rounds [ranker.rounds]"),
    force: bool = typer.Option(False, "--force", help="With --promote: make it @champion even when it "
                               "does not beat the champion"),
) -> None:
    """Train the LightGBM lambdarank ranker from a click log and register it in MLflow.

    A click-only log (no impressions) is learnt by stacking: the candidate models' split of the
    log, the ranker trained on the part they did not see."""
    from recsys.data.contracts import ContractError
    from recsys.ranking.dataset import TrainingDataError
    from training.ranker import train_ranker as run

    settings = settings_from(ctx, **{"ranker.rounds": rounds})
    ws = workspace(settings)
    with step("train ranker") as info:
        try:
            result = run(settings, ws, logs, promote, retrieval_uri=retrieval, force=force, say=say)
        except (ContractError, TrainingDataError, FileNotFoundError) as exc:
            raise fail(str(exc)) from exc
        counts = {k: v for k, v in result.counts.items() if v and k != "log_rows"}
        if verbose():
            console.print(f"counts: {counts}")
        info["summary"] = result.summary()


def recommend(
    ctx: typer.Context,
    users: Path = typer.Option(None, "--users",
                               help="Users file: parquet/CSV with user_id, or one id a line"),
    all_users: bool = typer.Option(False, "--all", help="Every user of the workspace"),
    k: int = typer.Option(10, "--k", help="Items per user"),
    out: Path = typer.Option(..., "--out", help="Output parquet (user_id, item_id, rank, score, reason)"),
    as_of: str = typer.Option(None, "--as-of", help="ISO time; default: just after the last logged event"),
    categories: str = typer.Option(None, "--categories", help="Only these categories (comma list)"),
    exclude_categories: str = typer.Option(None, "--exclude-categories", help="Never these (comma list)"),
    min_price: float = typer.Option(None, "--min-price", help="Only items priced at least this"),
    max_price: float = typer.Option(None, "--max-price", help="Only items priced at most this"),
    max_per_category: int = typer.Option(None, "--max-per-category", help="At most N items per category"),
    diversity: float = typer.Option(0.0, "--diversity", help="0 (ranker order) to 1 (most diverse), MMR"),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (actors holding a "
                               "Recommender each rank user partitions; the same output)"),
) -> None:
    """Top-K recommendations per user from the two-stage system (the serving code path), with a
    short reason per item; the shop's rules apply before the cut to K."""
    from recsys.rules import RuleError, Rules
    from training.recommend import read_users, recommend_batch

    if (users is None) == (not all_users):
        raise fail("give exactly one of --users PATH or --all")
    if engine not in ("local", "ray"):
        raise fail(f"--engine must be local or ray, got '{engine}'")
    when = None
    if as_of:
        try:
            when = datetime.fromisoformat(as_of)
        except ValueError as exc:
            raise fail(f"--as-of '{as_of}' is not an ISO time (e.g. 2024-03-01T00:00:00Z)") from exc
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:
        rules = Rules.build(categories, exclude_categories, min_price, max_price, None, max_per_category,
                            diversity)
    except RuleError as exc:
        raise fail(str(exc)) from exc
    settings = settings_from(ctx)
    ws = workspace(settings)
    with step("recommend") as info:
        try:
            ids = read_users(users) if users is not None else None
            if engine == "ray":
                from training.recommend_ray import recommend_on_ray

                result = recommend_on_ray(settings, ws, ids, k, when, out, rules=rules)
                info["summary"] = result.summary()
                return
            result = recommend_batch(settings, ws, ids, k, when, out, rules=rules, say=say)
        except (FileNotFoundError, LookupError, ValueError) as exc:
            raise fail(str(exc)) from exc
        info["summary"] = result.summary()
