"""`recsys train retrieval`: the two-tower model, its item index and its evaluation table."""

from __future__ import annotations

import typer

from recsys.cli.common import console, fail, say, settings_from, step, workspace


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["train"].command("retrieval")(train_retrieval)


def train_retrieval(
    ctx: typer.Context,
    epochs: int = typer.Option(None, "--epochs", help="Maximum epochs [retrieval.epochs]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Clicks per batch [retrieval.batch_size]"),
    split: str = typer.Option(None, "--split", help="temporal, random (RecBole 80/10/10) or auto "
                              "(random for a click-only log) [retrieval.split]"),
    index: str = typer.Option(None, "--index", help="auto, exact, hnsw or ivf [retrieval.index]"),
    precision: str = typer.Option(None, "--precision", help="float32 or bfloat16 [retrieval.precision]"),
    cold_items: float = typer.Option(None, "--cold-items", help="Share of items whose train/validation "
                                     "clicks are held out to measure cold-start items; the registered "
                                     "model lacks those clicks [retrieval.cold_item_fraction]"),
    challenger: bool = typer.Option(False, "--challenger", help="Register as @challenger, not @champion"),
    force: bool = typer.Option(False, "--force", help="Make it @champion even when it does not beat the "
                               "champion on this split's test part"),
) -> None:
    """Train the two-tower retrieval model on clicks and fit EASE beside it, evaluate both against
    most-popular and CLIP-only, and register them in MLflow (the two-tower with its item vectors
    and index). Each becomes @champion only when it beats the champion on a held-out part."""
    from training.retrieval import train_retrieval as run

    settings = settings_from(ctx, **{"retrieval.epochs": epochs, "retrieval.batch_size": batch_size,
                                     "retrieval.split": split, "retrieval.index": index,
                                     "retrieval.precision": precision,
                                     "retrieval.cold_item_fraction": cold_items})
    ws = workspace(settings)
    with step("train retrieval") as info:
        try:
            result = run(settings, ws, promote=not challenger, force=force, say=say)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from exc
        held = result.counts.get("cold_items_held_out")
        held_note = f"; {held:,} items held out as cold" if held else ""
        console.print(f"[bold]test evaluation[/] ({result.protocol}; seen items excluded; cold items "
                      f"ranked among cold items{held_note})")
        console.print(result.evaluation.format(sorted({10, settings.retrieval.eval_k})), markup=False,
                      highlight=False)
        info["summary"] = result.summary()
