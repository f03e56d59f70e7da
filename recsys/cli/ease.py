"""`recsys train ease`: the closed-form collaborative baseline alone."""

from __future__ import annotations

import typer

from recsys.cli.common import fail, settings_from, step, workspace


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["train"].command("ease")(train_ease)


def train_ease(
    ctx: typer.Context,
    challenger: bool = typer.Option(False, "--challenger", help="Register as @challenger, not @champion"),
    force: bool = typer.Option(False, "--force", help="Make it @champion even when its λ does not beat "
                               "the champion's on this split's validation part"),
) -> None:
    """Fit EASE alone on the clicks (λ chosen on a validation part; the offline A/B window left
    out) and register it in MLflow as models:/ease; `train retrieval` fits it too, beside the
    two-tower. Compare it with `recsys evaluate ab --treatment models:/ease@champion`."""
    from training.fit_ease import fit_ease

    settings = settings_from(ctx)
    ws = workspace(settings)
    with step("train ease") as info:
        try:
            result = fit_ease(settings, ws, promote=not challenger, force=force)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from exc
        info["summary"] = result.summary()
