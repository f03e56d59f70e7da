"""`recsys clip finetune` and `recsys backfill`: the CLIP encoder and the item vectors it makes."""

from __future__ import annotations

import typer

from recsys.cli.common import console, fail, settings_from, step, workspace


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


def backfill_command(
    ctx: typer.Context,
    shard: str = typer.Option(None, help="Embed only part i of n ('i/n', by item hash); consolidate later"),
    force: bool = typer.Option(False, "--force", help="Re-embed every item, changed or not"),
    push: bool = typer.Option(True, "--push/--no-push", help="Push item vectors to the Feast stores"),
    precision: str = typer.Option(None, help="float32 or bfloat16 [default float32]"),
    batch_size: int = typer.Option(None, "--batch-size", help="Encoder batch size [default 64]"),
    workers: int = typer.Option(None, help="Image-decoding worker processes [default 1]"),
) -> None:
    """Embed new or changed items (content hash) into item_embeddings; resumable; then push to Feast."""
    from recsys.embeddings.encoder import NoTrainedEncoder
    from training.backfill import backfill, parse_shard

    settings = settings_from(ctx, **{"clip.precision": precision, "clip.batch_size": batch_size,
                                     "clip.workers": workers})
    ws = workspace(settings)
    try:
        part = parse_shard(shard) if shard else None
    except ValueError as exc:
        raise fail(str(exc)) from exc
    with step("backfill") as info:
        try:
            result = backfill(settings, ws, shard=part, force=force, push_to_feast=push)
        except (NoTrainedEncoder, FileNotFoundError) as exc:
            raise fail(str(exc)) from exc
        info["summary"] = result.summary()
    if part is not None:
        console.print(f"shard {part[0]}/{part[1]} done; run `recsys backfill` once every shard is done "
                      "to consolidate and push")
