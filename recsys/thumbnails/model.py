"""The embedded thumbnail model: a small UNet conditioned on a CLIP text vector.

Why this shape: on 2 CPU cores, self-attention at 32x32 dominated the cost of a UNet step, and
cross-attention over token sequences is not needed when the condition is one pooled CLIP vector.
So the UNet has no attention at all; the vector enters through diffusers'
`class_embed_type="projection"` (a linear map added to the timestep embedding of every resnet
block). It is trained at 32x32 (a step at batch 32 is ~0.4 s on one thread, vs ~5 s for a larger
UNet at 64 px) and upsampled to 128 for storage: the catalogue's images are flat shapes, colours
and patterns, which survive 32 px, and CLIP consumes them at 64-224 px anyway.

Training uses a DDPM noise schedule (cosine); sampling uses DDIM or DPM-Solver++ (deterministic,
~10 steps) with classifier-free guidance: the condition is replaced by the zero vector with
probability `cond_dropout` in training, and at sampling
`out = out(null) + g * (out(cond) - out(null))`. The UNet predicts the clean image by default
(`prediction_type="sample"`): in a 150-step toy run epsilon prediction had not yet learnt to
follow its condition while x0 and v prediction had, and on the embedded world x0 gave the best
CLIP score and retrieval recall for the ~2 minute training budget.

Saved as a folder: `unet/` (diffusers `save_pretrained`), `scheduler/` and `meta.json`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from recsys.thumbnails.config import ThumbnailConfig

log = logging.getLogger(__name__)

WEIGHTS = "diffusion_pytorch_model.safetensors"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class CheckpointError(RuntimeError):
    """A model folder is missing, incomplete or does not match its config."""


class ConditioningError(ValueError):
    """Conditioning vectors do not fit the model (wrong width, NaN, or another encoder)."""


def build_unet(resolution: int, cond_dim: int, channels: Sequence[int], layers_per_block: int):
    """A UNet2DConditionModel with no attention blocks, conditioned through a class projection."""
    from diffusers import UNet2DConditionModel

    levels = len(channels)
    if resolution % (2 ** (levels - 1)):
        raise ValueError(f"resolution {resolution} must be divisible by 2^{levels - 1} "
                         f"for a UNet with {levels} levels (channels {list(channels)})")
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3,
        down_block_types=("DownBlock2D",) * levels, up_block_types=("UpBlock2D",) * levels,
        mid_block_type=None, block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        norm_num_groups=8, cross_attention_dim=8,  # unused: no cross-attention blocks
        class_embed_type="projection", projection_class_embeddings_input_dim=cond_dim,
    )


def build_train_scheduler(train_timesteps: int, prediction_type: str):
    from diffusers import DDPMScheduler

    # cosine schedule: small images lose their signal too early under the linear one
    return DDPMScheduler(num_train_timesteps=train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type=prediction_type, clip_sample=True)


def sampling_scheduler(train_scheduler: Any, sampler: str):
    """DDIM (eta 0) or DPM-Solver++ multistep, both deterministic given the initial noise.

    Built from the few settings that define the noise schedule, never `from_config` of the whole
    training config: that carries over (or not, depending on whether it was loaded from disk)
    DDPM-specific defaults and made a loaded model sample differently from the one just trained.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    c = train_scheduler.config
    common = {"num_train_timesteps": c.num_train_timesteps, "beta_schedule": c.beta_schedule,
              "prediction_type": c.prediction_type, "timestep_spacing": "trailing"}
    if sampler == "ddim":
        return DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=False)
    if sampler == "dpm":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler '{sampler}'; expected ddim or dpm")


def check_conditions(cond: np.ndarray | torch.Tensor, cond_dim: int, what: str = "conditions") -> None:
    shape = tuple(cond.shape)
    if len(shape) != 2 or shape[1] != cond_dim:
        raise ConditioningError(f"{what}: expected shape (n, {cond_dim}), got {shape}")
    arr = cond if isinstance(cond, np.ndarray) else cond.detach().float().cpu().numpy()
    if not np.isfinite(arr).all():
        bad = np.where(~np.isfinite(arr).all(axis=1))[0][:5].tolist()
        raise ConditioningError(f"{what}: non-finite values in rows {bad}")


def noise_for(seeds: Sequence[int], resolution: int) -> torch.Tensor:
    """Initial noise, one CPU generator per sample: an item's image depends only on its own seed,
    not on the batch it was drawn in (so resumed and re-batched runs draw the same pictures)."""
    return torch.stack([
        torch.randn(3, resolution, resolution, generator=torch.Generator().manual_seed(int(s)))
        for s in seeds
    ])


def to_pil(batch: torch.Tensor, output_size: int | None = None) -> list[Image.Image]:
    """Tensors in [-1, 1], (n, 3, h, w) -> RGB images, upsampled (bicubic) to `output_size`."""
    arr = ((batch.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    arr = arr.permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(a, mode="RGB") for a in arr]
    if output_size and images and images[0].size[0] != output_size:
        images = [im.resize((output_size, output_size), Image.Resampling.BICUBIC) for im in images]
    return images


def images_to_tensor(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """RGB images -> (n, 3, r, r) in [-1, 1]; area-averaged downsampling keeps colours honest."""
    out = np.empty((len(images), resolution, resolution, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(im.convert("RGB").resize((resolution, resolution), Image.Resampling.BOX))
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class ThumbnailModel:
    """UNet + noise schedule + what it was trained on (meta). Pure torch; no I/O but save/load."""

    def __init__(self, unet: Any, train_scheduler: Any, meta: Mapping[str, Any] | None = None):
        self.unet = unet
        self.train_scheduler = train_scheduler
        self.meta: dict[str, Any] = dict(meta or {})

    @classmethod
    def create(cls, cfg: ThumbnailConfig, cond_dim: int, seed: int = 0,
               meta: Mapping[str, Any] | None = None) -> ThumbnailModel:
        """A fresh model from a `ThumbnailConfig` (weights drawn from `seed`)."""
        torch.manual_seed(seed)
        unet = build_unet(cfg.resolution, cond_dim, cfg.channels, cfg.layers_per_block)
        return cls(unet, build_train_scheduler(cfg.train_timesteps, cfg.prediction_type), meta)

    @property
    def cond_dim(self) -> int:
        return int(self.unet.config.projection_class_embeddings_input_dim)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def to(self, device: str | torch.device, precision: str = "float32") -> ThumbnailModel:
        """Move to `device`; bf16 casts the weights (CPU autocast was measured to collapse)."""
        self.unet.to(device)
        if self.dtype != DTYPES[precision]:
            from diffusers.utils import logging as dlogging

            level = dlogging.get_verbosity()
            dlogging.set_verbosity_error()  # "modules that should be kept in float32: []": none are
            try:
                self.unet.to(dtype=DTYPES[precision])
            finally:
                dlogging.set_verbosity(level)
        return self

    def _scaled(self, cond: torch.Tensor) -> torch.Tensor:
        """Unit CLIP vectors have entries of ~1/sqrt(d): scale them to ~unit variance, or the
        projected condition starts tiny beside the timestep embedding and is learnt slowly."""
        return cond * float(np.sqrt(self.cond_dim))

    def training_loss(self, images: torch.Tensor, cond: torch.Tensor, cond_dropout: float,
                      generator: torch.Generator, autocast_bf16: bool = False) -> torch.Tensor:
        """DDPM loss on a batch: noise at random timesteps, predict the configured target (MSE).

        Randomness comes from `generator` (CPU), so a training run is reproducible for a seed.
        """
        device = self.device
        n = images.shape[0]
        sched = self.train_scheduler
        noise = torch.randn(images.shape, generator=generator)
        t = torch.randint(0, sched.config.num_train_timesteps, (n,), generator=generator)
        keep = (torch.rand(n, generator=generator) >= cond_dropout).float().unsqueeze(1)
        images, noise, t = images.to(device), noise.to(device), t.to(device)
        cond = cond.to(device) * keep.to(device)
        noisy = sched.add_noise(images, noise, t)
        kind = sched.config.prediction_type
        target = {"epsilon": noise, "sample": images}.get(kind)
        if target is None:
            target = sched.get_velocity(images, noise, t)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast_bf16):
            pred = self.unet(noisy, t, encoder_hidden_states=None, class_labels=self._scaled(cond)).sample
        return torch.nn.functional.mse_loss(pred.float(), target)

    @torch.no_grad()
    def sample(self, cond: np.ndarray | torch.Tensor, seeds: Sequence[int], steps: int = 15,
               guidance_scale: float = 3.0, sampler: str = "dpm",
               output_size: int | None = None) -> list[Image.Image]:
        """One image per row of `cond` (CLIP text vectors), deterministic for the seeds."""
        check_conditions(cond, self.cond_dim)
        if len(seeds) != len(cond):
            raise ValueError(f"{len(seeds)} seeds for {len(cond)} conditions")
        if len(seeds) == 0:
            return []
        self.unet.eval()
        device, dtype = self.device, self.dtype
        cond_t = torch.as_tensor(np.asarray(cond), dtype=torch.float32).to(device, dtype)
        guided = guidance_scale != 1.0
        if guided:
            cond_t = torch.cat([torch.zeros_like(cond_t), cond_t])
        sched = sampling_scheduler(self.train_scheduler, sampler)
        sched.set_timesteps(steps)
        x = noise_for(seeds, self.resolution).to(device) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = torch.cat([x, x]) if guided else x
            inp = sched.scale_model_input(inp, t)
            tt = torch.full((inp.shape[0],), int(t), device=device, dtype=torch.long)
            out = self.unet(inp.to(dtype), tt, encoder_hidden_states=None,
                            class_labels=self._scaled(cond_t)).sample
            out = out.float()
            if guided:
                uncond, condd = out.chunk(2)
                out = uncond + guidance_scale * (condd - uncond)
            x = sched.step(out, t, x).prev_sample
        return to_pil(x, output_size)

    # persistence -----------------------------------------------------------------------------
    def save(self, folder: str | Path, meta: Mapping[str, Any] | None = None) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.train_scheduler.save_pretrained(folder / "scheduler")
        self.meta.update(meta or {})
        self.meta.update({"cond_dim": self.cond_dim, "resolution": self.resolution,
                          "parameters": self.num_parameters()})
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu", precision: str = "float32") -> ThumbnailModel:
        """Load a saved folder, strictly: every weight must match the UNet config's shapes."""
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from safetensors.torch import load_file

        folder = Path(folder)
        config_file, weights = folder / "unet" / "config.json", folder / "unet" / WEIGHTS
        for needed in (config_file, weights, folder / "scheduler"):
            if not needed.exists():
                raise CheckpointError(
                    f"thumbnail checkpoint incomplete: {needed} is missing "
                    f"(run `recsys thumbnails train`, or point thumbnails.model_uri at a trained model)")
        try:
            config = UNet2DConditionModel.load_config(folder / "unet")
            unet = UNet2DConditionModel.from_config(config)
        except Exception as exc:
            raise CheckpointError(f"{config_file}: not a valid UNet config: {exc}") from exc
        state = load_file(weights)
        try:
            unet.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:4]
            raise CheckpointError(
                f"{weights} does not match the UNet config {config_file} (was the config edited, "
                f"or the weights copied from another model?): {' | '.join(first)}") from exc
        sched = DDPMScheduler.from_pretrained(folder / "scheduler")
        meta_file = folder / "meta.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        model = cls(unet, sched, meta)
        return model.to(device, precision)
