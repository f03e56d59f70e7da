"""Two ways to draw a thumbnail from a prompt, behind one small interface.

- `EmbeddedThumbnailer`: the small UNet of `model.py`, conditioned on the prompt's CLIP text
  vector (from whatever encoder is passed in: anything with `encode_texts`, `.dim`, `.version`).
- `PipelineThumbnailer`: a pretrained diffusers text-to-image pipeline (Stable Diffusion family:
  BK-SDM-Tiny, tiny-sd, sd-turbo, ...) loaded from a local folder or a hub id.

Both draw each image from its own seed, so a thumbnail does not depend on its batch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from recsys.thumbnails.config import ThumbnailConfig
from recsys.thumbnails.model import DTYPES, CheckpointError, ConditioningError, ThumbnailModel

log = logging.getLogger(__name__)


class TextImageEncoder(Protocol):
    """What the thumbnails need of a CLIP encoder (`recsys.embeddings.encoder.ClipEncoder`).

    Both methods batch internally and return float32 (n, dim), (0, dim) for an empty list."""

    version: str
    dim: int

    def encode_texts(self, texts: list[str]) -> np.ndarray: ...
    def encode_images(self, images: list[Image.Image]) -> np.ndarray: ...


class Thumbnailer(Protocol):
    name: str      # registered model name or pipeline id
    version: str   # model version tag (e.g. thumbnails/v3) or pipeline revision
    sampler: str

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                 guidance_scale: float) -> list[Image.Image]: ...


@dataclass
class EmbeddedThumbnailer:
    model: ThumbnailModel
    encoder: TextImageEncoder
    name: str = "thumbnails"
    version: str = "local"
    sampler: str = "dpm"
    output_size: int = 128

    def __post_init__(self) -> None:
        check_encoder_fits(self.model.meta, self.model.cond_dim, self.encoder)

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                 guidance_scale: float) -> list[Image.Image]:
        if not prompts:
            return []
        cond = self.encoder.encode_texts(list(prompts))
        return self.model.sample(cond, seeds, steps=steps, guidance_scale=guidance_scale,
                                 sampler=self.sampler, output_size=self.output_size)


def check_encoder_fits(meta: dict[str, Any], cond_dim: int, encoder: TextImageEncoder) -> None:
    """The model only understands vectors from the CLIP it was trained with: say so plainly."""
    if int(encoder.dim) != cond_dim:
        raise ConditioningError(
            f"the thumbnail model expects {cond_dim}-d text vectors but the CLIP encoder "
            f"{encoder.version} gives {encoder.dim}-d: retrain with `recsys thumbnails train`")
    trained_with = meta.get("encoder_version")
    if trained_with and trained_with != encoder.version:
        raise ConditioningError(
            f"the thumbnail model was trained on text vectors of CLIP {trained_with}, but the "
            f"current encoder is {encoder.version}: its vectors live in another space; retrain "
            f"with `recsys thumbnails train`")


def load_pipeline(source: str, device: str = "cpu", precision: str = "float32",
                  sampler: str = "dpm") -> Any:
    """A diffusers `StableDiffusionPipeline` from a local folder (offline) or a hub id.

    A folder loads with `local_files_only=True`; a hub id must already be in the local hub
    cache on a machine without internet (its OSError is turned into a `CheckpointError`).
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

    from recsys.progress import enabled

    if not enabled():  # diffusers/transformers draw their own loading bars
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    local = Path(source).expanduser()
    is_local = local.exists()
    if not is_local and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise CheckpointError(f"thumbnail pipeline folder {local} does not exist "
                              f"(settings thumbnails.pipeline)")
    if is_local and not (local / "model_index.json").exists():
        raise CheckpointError(f"{local} is not a diffusers pipeline folder (no model_index.json)")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            str(local) if is_local else source, dtype=DTYPES[precision],
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            local_files_only=is_local,
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the diffusers pipeline '{source}': {exc}") from exc
    if sampler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    elif sampler == "dpm":
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@dataclass
class PipelineThumbnailer:
    pipe: Any
    name: str
    version: str = "pretrained"
    sampler: str = "dpm"
    resolution: int = 512
    output_size: int = 128

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], steps: int,
                 guidance_scale: float) -> list[Image.Image]:
        if not prompts:
            return []
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        # the pipeline draws latents from CPU generators, one per image; truncation of long
        # prompts to the text encoder's context happens inside the pipeline's tokenizer
        latents = torch.stack([
            torch.randn(self._latent_shape(), generator=g) for g in generators
        ]).to(self.pipe.device, self.pipe.unet.dtype)
        out = self.pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale,
                        height=self.resolution, width=self.resolution, latents=latents,
                        output_type="pil")
        return [im.convert("RGB").resize((self.output_size, self.output_size),
                                         Image.Resampling.BICUBIC) for im in out.images]

    def _latent_shape(self) -> tuple[int, int, int]:
        scale = self.pipe.vae_scale_factor
        return (self.pipe.unet.config.in_channels, self.resolution // scale, self.resolution // scale)


def pipeline_thumbnailer(cfg: ThumbnailConfig, device: str) -> PipelineThumbnailer:
    """The configured pretrained pipeline (`thumbnails.backend = "pipeline"`)."""
    if not cfg.pipeline:
        raise CheckpointError("thumbnails.backend is 'pipeline' but thumbnails.pipeline (a folder or "
                              "hub id) is not set")
    pipe = load_pipeline(cfg.pipeline, device, cfg.precision, cfg.sampler)
    return PipelineThumbnailer(pipe, name=str(cfg.pipeline), sampler=cfg.sampler,
                               resolution=cfg.pipeline_resolution, output_size=cfg.output_size)
