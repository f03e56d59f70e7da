"""`recsys clip finetune` and `recsys backfill`: the CLIP encoder and the item vectors it makes."""

from __future__ import annotations

import typer

from recsys.cli.common import fail, settings_from, step, workspace


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    if "clip" not in groups:
        groups["clip"] = typer.Typer(help="The CLIP encoder: fine-tune it on the catalogue.",
                                     no_args_is_help=True)
        app.add_typer(groups["clip"], name="clip")
    groups["clip"].command("finetune")(clip_finetune)
    app.command("backfill")(backfill_command)


def clip_finetune(
    ctx: typer.Context,
    model: str = typer.Option(None, help="open_clip model name [default recsys-clip-tiny]"),
    pretrained: str = typer.Option(None, help="Hub tag or local checkpoint to start from [default: scratch]"),
    epochs: int = typer.Option(None, help="Most epochs; the best held-out epoch is kept [clip.epochs]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Contrastive batch size [default 128]"),
    learning_rate: float = typer.Option(None, "--lr", help="Peak learning rate [default 1e-3]"),
) -> None:
    """Train CLIP on the catalogue's (image, description) pairs; registers models:/clip@champion."""
    from training.clip import finetune_clip

    settings = settings_from(ctx, **{
        "clip.model": model, "clip.pretrained": pretrained, "clip.epochs": epochs,
        "clip.train_batch_size": batch_size, "clip.learning_rate": learning_rate,
    })
    ws = workspace(settings)
    with step("clip finetune") as info:
        try:
            result = finetune_clip(settings, ws)
        except (FileNotFoundError, ValueError) as exc:
            raise fail(str(exc)) from exc
        info["summary"] = result.summary()


ENGINE = typer.Option("local", "--engine", help="local (this process) or ray (actors on the [ray] "
                      "cluster, or a local instance capped at ray.num_cpus)")


def backfill_command(
    ctx: typer.Context,
    force: bool = typer.Option(False, "--force", help="Re-embed every item, changed or not"),
    push: bool = typer.Option(True, "--push/--no-push", help="Push item vectors to the Feast stores"),
    precision: str = typer.Option(None, help="float32 or bfloat16 [default float32]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Encoder batch size [default 64]"),
    workers: int = typer.Option(None, help="Image-decoding worker processes [default 1]; with --engine "
                                "ray: encoder actors [ray.workers, 0: one per CPU]"),
    engine: str = ENGINE,
) -> None:
    """Embed new or changed items (content hash) into item_embeddings; resumable; then push to Feast."""
    from recsys.embeddings.encoder import NoTrainedEncoder

    if engine not in ("local", "ray"):
        raise fail(f"--engine must be local or ray, got '{engine}'")
    ray = engine == "ray"
    section = "ray" if ray else "clip"
    settings = settings_from(ctx, **{"clip.precision": precision, f"{section}.batch_size": batch_size,
                                     f"{section}.workers": workers})
    ws = workspace(settings)
    with step("backfill") as info:
        try:
            if ray:
                from training.backfill_ray import backfill_on_ray

                result = backfill_on_ray(settings, ws, force=force, push_to_feast=push)
            else:
                from training.backfill import backfill

                result = backfill(settings, ws, force=force, push_to_feast=push)
        except (NoTrainedEncoder, FileNotFoundError) as exc:
            raise fail(str(exc)) from exc
        info["summary"] = result.summary()
