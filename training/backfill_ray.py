"""`recsys backfill --engine ray`: the backfill's embedding on a pool of Ray actors.

`training.backfill.backfill` plans the run as always (content hashes, what the table and the
shards already hold) and hands the items to embed to `embed_on_ray`: Ray Data reads them in
blocks, `map_batches` sends `ray.batch_size` items at a time to a pool of `EncodeItems` actors
(one per worker, each holding one CLIP encoder on the device the settings name) that decode,
preprocess and embed them with the local path's per-batch code (`embed_batch`), and the rows
stream back to the driver, which writes the resumable shards and consolidates as before. So a
Ray run resumes a killed local run and the other way round, and the tables agree (up to float
rounding of different batch compositions: within 1e-4).

Each actor loads its encoder as the driver does (`models:/clip@champion`, else `clip.pretrained`)
and reads the images by `image_uri`: on a cluster the MLflow store and the images must be
reachable from every node (an MLflow server with an object store; images on shared storage).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from datetime import datetime

import polars as pl

from recsys.config import Settings
from recsys.data import columns as C
from recsys.distributed.cluster import ray_session, worker_count
from recsys.embeddings.encoder import ClipEncoder, load_trained_encoder
from recsys.runtime import configure_threads, resolve_device
from recsys.workspace import Workspace
from training.backfill import BackfillResult, EmbedWork, backfill, embed_batch

log = logging.getLogger(__name__)
BLOCK_BATCHES = 8  # encoder batches per Ray Data block


class EncodeItems:
    """A Ray actor's job: one CLIP encoder, called on batches of planned items (pyarrow)."""

    def __init__(self, settings: Settings, version: str, stamp: datetime) -> None:
        configure_threads(settings.threads)
        self.settings, self.stamp = settings, stamp
        self.encoder = load_trained_encoder(settings)
        if self.encoder.version != version:
            raise RuntimeError(f"a Ray worker loaded encoder {self.encoder.version}, the driver {version}: "
                               "do the workers see the same MLflow store and clip.pretrained?")

    def __call__(self, batch):  # pyarrow.Table -> pyarrow.Table
        cols = batch.to_pydict()
        rows = embed_batch(self.encoder, self.settings.clip, cols["uri"], cols["id"], cols["text"],
                           cols["source"], cols["hash"], self.stamp)
        return rows.to_arrow()


def embed_on_ray(settings: Settings, encoder: ClipEncoder, work: EmbedWork) -> Iterator[pl.DataFrame]:
    """An `Embedder` on Ray: the work's rows, batch by batch, from a pool of `EncodeItems` actors
    (needs an open session: `ray_session`)."""
    import ray
    import ray.data

    workers = worker_count(settings.ray)
    gpu = resolve_device(settings.device).startswith("cuda")
    if gpu:  # one GPU per encoder actor: no more actors than the cluster has GPUs
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus == 0:
            raise RuntimeError(f"device {settings.device} asks for a GPU, and the Ray cluster has none: "
                               "set device = \"cpu\" or join a cluster with GPU nodes")
        workers = min(workers, gpus)
    batch = settings.ray.batch_size
    frame = work.frame()
    step = batch * max(1, min(BLOCK_BATCHES, len(work) // (batch * workers * 2)))  # >= 2 blocks per actor
    blocks = [frame.slice(i, step).to_arrow() for i in range(0, frame.height, step)]
    with warnings.catch_warnings():
        # Ray 2.60 takes max_restarts only through its deprecated **ray_remote_args (removed in 2.64)
        warnings.simplefilter("ignore", DeprecationWarning)
        rows = ray.data.from_arrow(blocks).map_batches(
            EncodeItems, fn_constructor_args=(settings, encoder.version, work.stamp), batch_size=batch,
            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0,
            # a lost actor fails the run (the next run resumes from the shards): with restarts on,
            # Ray prints that constructor arguments in the object store may not survive one
            max_restarts=0,
        )
    log.debug("backfill on Ray: %d items, %d actors, batch %d", len(work), workers, batch)
    for part in rows.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield pl.from_arrow(part).cast({C.EVENT_TIMESTAMP: pl.Datetime("us", "UTC")})


def backfill_on_ray(settings: Settings, ws: Workspace, force: bool = False, push_to_feast: bool = True,
                    encoder: ClipEncoder | None = None) -> BackfillResult:
    """`training.backfill.backfill` with the embedding on Ray (a session opened for the run, or
    the caller's)."""
    with ray_session(settings.ray) as where:
        return backfill(settings, ws, force=force, push_to_feast=push_to_feast, encoder=encoder,
                        embed=embed_on_ray, engine=f"ray ({where}, workers {worker_count(settings.ray)})")
