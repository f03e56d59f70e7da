"""`recsys evaluate ab`: offline A/B comparison of two policies, with a verdict and a report."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from recsys.cli.common import console, fail, settings_from, step


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    group = groups.get("evaluate")
    if group is None:
        group = typer.Typer(
            help="Offline evaluation: A/B comparison of two model versions.", no_args_is_help=True
        )
        app.add_typer(group, name="evaluate")
        groups["evaluate"] = group
    group.command("ab")(evaluate_ab)


def evaluate_ab(
    ctx: typer.Context,
    control: str = typer.Option(
        ..., "--control", help="models:/ranker@champion, models:/ranker/3 (the two-stage system), "
        "models:/ease@champion (EASE alone), popular or popular:7d"
    ),
    treatment: str = typer.Option(
        ..., "--treatment", help="models:/ranker@challenger, models:/ranker/4, "
        "models:/ease@champion, popular or popular:7d"
    ),
    logs: Path = typer.Option(
        None,
        "--logs",
        help="Click log (impressions contract, parquet/CSV) [default: the workspace's impressions table]",
    ),
    k: int = typer.Option(None, "--k", help="List length K [default from config: 10]"),
    bootstrap: int = typer.Option(None, "--bootstrap", help="Bootstrap replicates [default 1000]"),
    holdout_days: float = typer.Option(
        None, "--holdout-days",
        help="Held-out window: last N days [default: the window the compared rankers were trained without]",
    ),
    primary: str = typer.Option(
        None, "--primary", help="Primary metric of the verdict, e.g. ndcg@10, ctr:dr"
    ),
    min_lift: float = typer.Option(None, "--min-lift", help="Relative lift needed to ship, e.g. 0.02"),
    max_users: int = typer.Option(None, "--max-users", help="Evaluate a seeded sample of users"),
    fail_on_regression: bool = typer.Option(
        False, "--fail-on-regression", help="Exit with code 3 when the verdict is don't ship (for CI)"
    ),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log the run to MLflow"),
) -> None:
    """Compare two policies on a held-out window: ranking metrics, off-policy CTR, truth check, verdict."""
    from training.evaluate import evaluate_ab as run

    settings = settings_from(
        ctx,
        **{
            "evaluation.k": k,
            "evaluation.bootstrap": bootstrap,
            "evaluation.holdout_days": holdout_days,
            "evaluation.primary_metric": primary,
            "evaluation.min_lift": min_lift,
            "evaluation.max_users": max_users,
        },
    )
    if logs is not None and not logs.exists():
        raise fail(f"--logs {logs}: file not found")
    with step("evaluate ab") as info:
        try:
            out = run(settings, control, treatment, logs, track=not no_track)
        except (LookupError, ValueError, RuntimeError, FileNotFoundError) as exc:
            raise fail(str(exc)) from exc
        info["summary"] = out.summary()
    result = out.result
    table = Table("metric", "control", "treatment", "lift", "lift CI", "p", title="overall")
    for d in result.deltas().values():
        table.add_row(
            d.metric,
            f"{d.control:.4f}",
            f"{d.treatment:.4f}",
            f"{d.lift:+.1%}",
            f"[{d.lift_low:+.1%}, {d.lift_high:+.1%}]",
            f"{d.p_value:.3g}",
        )
    console.print(table)
    if result.ope_note:
        console.print(f"[yellow]off-policy part skipped:[/] {result.ope_note}")
    if result.truth:
        t = Table(
            "arm", "estimator", "estimate", "CI", "true CTR", "covered", title="truth check (simulator)"
        )
        for r in result.truth:
            t.add_row(
                r.policy,
                r.estimator,
                f"{r.estimate:.4f}",
                f"[{r.low:.4f}, {r.high:.4f}]",
                f"{r.truth:.4f}",
                "yes" if r.covered else "[red]NO[/]",
            )
        console.print(t)
    colour = {"ship": "green", "don't ship": "red"}.get(result.verdict.decision, "yellow")
    console.print(f"[bold {colour}]{result.verdict.line()}[/]")
    console.print(f"report: {out.paths.get('html')}  ·  {out.paths.get('markdown')}")
    if fail_on_regression and result.verdict.decision == "don't ship":
        raise typer.Exit(3)
