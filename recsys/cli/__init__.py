"""`recsys`: the command line, and the composition root.

This package is the one part of `recsys` that may import the applications (`features`,
`training`, `serving`), and it does so inside commands only, so `recsys --help` stays fast.
Commands are grouped by noun, one module each (see `register` in every module).
"""

from __future__ import annotations

import typer

from recsys.cli import (
    common,
    data,
    demo,
    ease,
    embeddings,
    evaluate,
    features,
    models,
    ranking,
    retrieval,
    serve,
    thumbnails,
)

app = typer.Typer(
    name="recsys",
    help="Multimodal recommendations: CLIP item vectors, Feast features, two-tower retrieval, "
    "LightGBM ranking, diffusion thumbnails, MLflow tracking, FastAPI serving.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
app.callback()(common.main_options)

GROUPS: dict[str, typer.Typer] = {}
for _noun, _help in {
    "config": "Show the effective configuration.",
    "import": "Validate and import data into the workspace (MovieLens, or your own tables).",
    "data": "Versions of the stored tables: history and rollback.",
    "models": "Registered models, versions and aliases in MLflow.",
    "train": "Train the retrieval model, EASE or the ranker from click logs.",
}.items():
    GROUPS[_noun] = typer.Typer(help=_help, no_args_is_help=True)
    app.add_typer(GROUPS[_noun], name=_noun)

# in pipeline order, which is the order `recsys --help` lists them in
for _module in (data, embeddings, thumbnails, features, retrieval, ease, ranking, evaluate, serve, demo,
                models):
    _module.register(app, GROUPS)


# Errors that mean "your input or workspace is not as expected": shown as one clear message
# (the exception's text names the file, column or model), not as a traceback; -v shows it all.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, LookupError, FileNotFoundError, PermissionError)


def main() -> None:
    """The `recsys` executable."""
    import sys

    try:
        app()
    except USER_ERRORS as exc:
        if "-v" in sys.argv or "--verbose" in sys.argv:
            raise
        common.console.print(f"[bold red]error[/] ({type(exc).__name__}):", end=" ")
        common.console.print(str(exc), markup=False, highlight=False)
        common.console.print("[dim](run with -v for the traceback)[/]")
        sys.exit(1)
