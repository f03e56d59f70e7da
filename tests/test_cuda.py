"""The CLIP encoder and the thumbnail model on a CUDA device, each beside the same weights on the
CPU. `device: auto` resolves to CUDA where one is present, so this is what a GPU user runs; the
module is skipped where there is none (CI). The two-tower's GPU training is checked in
`tests/retrieval/test_quality.py`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recsys.runtime import resolve_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_device_is_cuda() -> None:
    assert resolve_device("auto") == "cuda"


def test_clip_encoder_on_cuda_gives_the_cpu_vectors(tmp_path: Path) -> None:
    from recsys.embeddings.config import ClipConfig
    from recsys.embeddings.encoder import ClipEncoder

    torch.manual_seed(0)
    cpu = ClipEncoder(ClipConfig(batch_size=2))
    checkpoint = cpu.save_checkpoint(tmp_path / "clip.pt")
    gpu = ClipEncoder(ClipConfig(batch_size=2), device="cuda", checkpoint=checkpoint)
    assert next(gpu.model.parameters()).device.type == "cuda"
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    texts = ["a red lamp", "a striped blue box with a longer description than the others", ""]
    for on_cpu, on_gpu in ((cpu.encode_images(images), gpu.encode_images(images)),
                           (cpu.encode_texts(texts), gpu.encode_texts(texts))):
        assert on_gpu.dtype == np.float32 and on_gpu.shape == on_cpu.shape
        np.testing.assert_allclose(on_gpu, on_cpu, atol=2e-3)
    bf16 = ClipEncoder(ClipConfig(batch_size=2, precision="bfloat16"), device="cuda", checkpoint=checkpoint)
    cosines = (bf16.encode_texts(texts) * cpu.encode_texts(texts)).sum(axis=1)
    assert cosines.min() > 0.99, cosines


def test_thumbnail_model_samples_and_trains_on_cuda(tmp_path: Path) -> None:
    from recsys.thumbnails.config import ThumbnailConfig
    from recsys.thumbnails.model import ThumbnailModel

    model = ThumbnailModel.create(ThumbnailConfig(resolution=16, channels=(16, 32), output_size=24),
                                  cond_dim=12, seed=0)
    model.save(tmp_path / "m")
    gpu = ThumbnailModel.load(tmp_path / "m", device="cuda")
    assert gpu.device.type == "cuda"
    cond = np.random.default_rng(0).normal(size=(3, 12)).astype(np.float32)
    cond /= np.linalg.norm(cond, axis=1, keepdims=True)
    on_cpu = model.sample(cond, [1, 2, 3], steps=3, guidance_scale=2.0, output_size=24)
    on_gpu = gpu.sample(cond, [1, 2, 3], steps=3, guidance_scale=2.0, output_size=24)
    for a, b in zip(on_cpu, on_gpu, strict=True):  # the same picture, up to rounding
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
        assert diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())
    # one optimiser step on the GPU, float32 and bf16 autocast: finite losses, the weights move
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    before = [p.detach().clone() for p in gpu.unet.parameters()]
    opt = torch.optim.AdamW(gpu.unet.parameters(), lr=1e-3)
    for bf16 in (False, True):
        loss = gpu.training_loss(images, torch.from_numpy(np.vstack([cond, cond[:1]])), 0.5,
                                 torch.Generator().manual_seed(3), autocast_bf16=bf16)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, gpu.unet.parameters(), strict=True))
