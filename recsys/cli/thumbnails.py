"""`recsys thumbnails train | generate | evaluate`: diffusion thumbnails for items without images."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.table import Table

from recsys.cli.common import console, fail, settings_from, step, workspace

HELP = "Diffusion thumbnails for items without images: train, generate, evaluate."


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    group = groups.get("thumbnails")
    if group is None:
        group = groups["thumbnails"] = typer.Typer(help=HELP, no_args_is_help=True)
        app.add_typer(group, name="thumbnails")
    group.command("train")(train)
    group.command("generate")(generate)
    group.command("evaluate")(evaluate)


@contextmanager
def _step(name: str) -> Iterator[dict[str, Any]]:
    """`step`, with the errors a user can fix turned into a one-line failure."""
    from recsys.thumbnails.model import CheckpointError, ConditioningError

    try:
        with step(name) as info:
            yield info
    except (CheckpointError, ConditioningError, FileNotFoundError, LookupError, ValueError) as exc:
        raise fail(str(exc)) from exc


def train(
    ctx: typer.Context,
    epochs: int = typer.Option(None, help="Passes over the catalogue [thumbnails.epochs]"),
    batch_size: int = typer.Option(None, help="Training batch [thumbnails.batch_size]"),
    precision: str = typer.Option(None, help="float32 or bfloat16 [thumbnails.train_precision]"),
) -> None:
    """Train the small text-conditioned UNet on items with images; register thumbnails@champion."""
    from training.thumbnails import train_thumbnails

    settings = settings_from(ctx, **{"thumbnails.epochs": epochs, "thumbnails.batch_size": batch_size,
                                     "thumbnails.train_precision": precision})
    with _step("thumbnails train") as info:
        result = train_thumbnails(settings, workspace(settings))
        info["summary"] = result.summary() + " (loss curve and sample grids in MLflow: recsys mlflow-ui)"


def generate(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Redraw items already generated"),
    steps: int = typer.Option(None, help="Sampling steps [thumbnails.steps]"),
    guidance: float = typer.Option(None, help="Classifier-free guidance scale [thumbnails.guidance_scale]"),
    batch_size: int = typer.Option(None, help="Thumbnails per batch [thumbnails.generate_batch_size]"),
) -> None:
    """Draw a PNG for every item without a usable image; set image_source = generated."""
    from training.thumbnails import generate_thumbnails

    settings = settings_from(ctx, **{"thumbnails.steps": steps, "thumbnails.guidance_scale": guidance,
                                     "thumbnails.generate_batch_size": batch_size})
    with _step("thumbnails generate") as info:
        report = generate_thumbnails(settings, workspace(settings), force=force)
        info["summary"] = report.summary()


def evaluate(
    ctx: typer.Context,
    items: int = typer.Option(None, help="Held-out items to judge [thumbnails.eval_items]"),
    seeds: int = typer.Option(None, help="Sampling seeds for the spread [thumbnails.eval_seeds]"),
) -> None:
    """CLIP score of generated vs real vs mismatched pairs, and text->image Recall@K."""
    from training.thumbnails import evaluate_thumbnails

    settings = settings_from(ctx, **{"thumbnails.eval_items": items, "thumbnails.eval_seeds": seeds})
    with _step("thumbnails evaluate") as info:
        out = evaluate_thumbnails(settings, workspace(settings))
        info["summary"] = (f"CLIP-score gap generated - mismatched {out['gap']:+.3f} "
                           f"± {out['gap_std']:.3f} over {settings.thumbnails.eval_seeds} seeds "
                           f"({int(out['eval_items'])} held-out items)")
    console.print(metrics_table(out))


def metrics_table(out: dict[str, float]) -> Table:
    """The evaluation as a small table: CLIP scores, then Recall@K by what the hidden items show."""
    table = Table("measure", "value", title="thumbnail quality (held-out items, real image hidden)")

    def pm(key: str) -> str:
        std = out.get(f"{key}_std")
        return f"{out[key]:.3f}" + (f" ± {std:.3f}" if std is not None else "")

    k = int(out["k"])
    rows = [("CLIP score: real image", "clip_real"), ("CLIP score: generated thumbnail", "clip_generated"),
            ("CLIP score: mismatched pair", "clip_mismatched"), ("gap generated - mismatched", "gap"),
            ("gap as share of real - mismatched", "gap_share_of_real"),
            (f"text->image Recall@{k}: real image", "recall_real"),
            (f"text->image Recall@{k}: generated", "recall_generated"),
            (f"text->image Recall@{k}: no image (placeholder)", "recall_no_image")]
    if "clip_catalogue_generated" in out:
        rows += [("CLIP score: catalogue thumbnails", "clip_catalogue_generated"),
                 ("CLIP score: catalogue, mismatched", "clip_catalogue_mismatched")]
    for label, key in rows:
        table.add_row(label, pm(key))
    return table
