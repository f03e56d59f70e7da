"""`recsys backfill --engine ray`: the backfill's embedding on a pool of Ray actors.

`training.backfill.backfill` plans the run as always (content hashes, what the table and the
shards already hold) and hands the items to embed to `embed_on_ray`, which sends
`ray.batch_size` items at a time (Arrow tables) to a pool of `EncodeItems` actors (`ray.workers`,
each holding one CLIP encoder on the device the settings name) that decode, preprocess and embed
them with the local path's per-batch code (`embed_batch`); the rows stream back in order to the
driver, which writes the resumable shards and consolidates as before. So a Ray run resumes a
killed local run and the other way round, and the tables agree (up to float rounding of
different batch compositions: within 1e-4).

The actors start before the driver plans, so their imports (torch, open_clip) and encoder loads
overlap the driver's; each has its next batch shipped while it embeds one
(`recsys.distributed.tasks.ordered_results`). Not Ray Data's `map_batches`: per job it started
four bookkeeping actors (stats, autoscaling coordinator, usage, actor locations: a process and
~1.5 s of CPU each) and a streaming executor in the driver, about 60% more CPU than the local
run for 6,000 items; this pool gives the same rows.

Each actor loads its encoder as the driver does (`models:/clip@champion`, else `clip.pretrained`)
and reads the images by `image_uri`: on a cluster the MLflow store and the images must be
reachable from every node (an MLflow server with an object store; images on shared storage).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import datetime
from functools import partial

import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.distributed.cluster import ray_session, worker_count
from recsys.distributed.tasks import actors, ordered_results
from recsys.embeddings.encoder import ClipEncoder, load_trained_encoder
from recsys.runtime import configure_threads, resolve_device
from recsys.workspace import Workspace
from training.backfill import BackfillResult, EmbedWork, backfill, embed_batch

log = logging.getLogger(__name__)


class EncodeItems:
    """A Ray actor's job: one CLIP encoder, called on batches of planned items (pyarrow)."""

    def __init__(self, settings: Settings) -> None:
        configure_threads(settings.threads)
        self.settings = settings
        self.encoder = load_trained_encoder(settings)

    def version(self) -> str:
        return self.encoder.version

    def __call__(self, batch, stamp: datetime):  # pyarrow.Table -> pyarrow.Table
        cols = batch.to_pydict()
        rows = embed_batch(self.encoder, self.settings.clip, cols["uri"], cols["id"], cols["text"],
                           cols["source"], cols["hash"], stamp)
        return rows.to_arrow()


@dataclass(frozen=True)
class EncoderVersion:
    """All the driver's plan and checks read of the encoder: its version (the actors hold the
    model, so the driver imports neither torch nor open_clip)."""

    version: str


def encoder_actors(settings: Settings) -> AbstractContextManager[list]:
    """The job's `EncodeItems` actors (`ray.workers`, one GPU each when `device` is CUDA: no more
    than the cluster has GPUs), started at once, killed at the end (needs an open session)."""
    import ray

    workers = worker_count(settings.ray)
    if resolve_device(settings.device).startswith("cuda"):
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus == 0:
            raise RuntimeError(f"device {settings.device} asks for a GPU, and the Ray cluster has none: "
                               "set device = \"cpu\" or join a cluster with GPU nodes")
        return actors(EncodeItems, min(workers, gpus), settings, num_cpus=0, num_gpus=1)
    return actors(EncodeItems, workers, settings)


def embed_on_ray(settings: Settings, encoder: ClipEncoder | EncoderVersion, work: EmbedWork,
                 pool: list | None = None) -> Iterator[pl.DataFrame]:
    """An `Embedder` on Ray: the work's rows, `ray.batch_size` items at a time, from a pool of
    `EncodeItems` actors (`pool`, else started here; needs an open session), in order."""
    import ray

    with ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(encoder_actors(settings))
        for version in ray.get([a.version.remote() for a in pool]):
            if version != encoder.version:
                raise RuntimeError(f"a Ray worker loaded encoder {version}, expected {encoder.version}: "
                                   "do the workers see the same MLflow store and clip.pretrained?")
        batch = settings.ray.batch_size
        frame = work.frame()
        blocks = (frame.slice(i, batch).to_arrow() for i in range(0, frame.height, batch))
        log.debug("backfill on Ray: %d items, %d actors, batch %d", len(work), len(pool), batch)
        def call(actor, block):  # noqa: ANN001, ANN202
            return actor.__call__.remote(block, work.stamp)

        for rows in ordered_results(pool, call, blocks):
            yield pl.from_arrow(rows).cast({C.EVENT_TIMESTAMP: pl.Datetime("us", "UTC")})


def backfill_on_ray(settings: Settings, ws: Workspace, force: bool = False, push_to_feast: bool = True,
                    encoder: ClipEncoder | None = None) -> BackfillResult:
    """`training.backfill.backfill` with the embedding on Ray (a session opened for the run, or
    the caller's). The encoder actors start first; without `encoder` the driver takes the version
    from the first actor instead of loading the model a second time."""
    import ray

    with ray_session(settings.ray) as where, encoder_actors(settings) as pool:
        if encoder is None:
            encoder = EncoderVersion(ray.get(pool[0].version.remote()))  # type: ignore[assignment]
        return backfill(settings, ws, force=force, push_to_feast=push_to_feast, encoder=encoder,
                        embed=partial(embed_on_ray, pool=pool),
                        engine=f"ray ({where}, workers {len(pool)})")
