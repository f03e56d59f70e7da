"""The embedded UNet: determinism, save/load, and clear errors for bad checkpoints and vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recsys.thumbnails.config import ThumbnailConfig
from recsys.thumbnails.model import CheckpointError, ConditioningError, ThumbnailModel

CFG = ThumbnailConfig(resolution=16, channels=(16, 32), output_size=24)


def pixels(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


@pytest.fixture
def model() -> ThumbnailModel:
    return ThumbnailModel.create(CFG, cond_dim=12, seed=0)


def test_sample_is_deterministic_per_seed_and_independent_of_batch(model, unit_vectors):
    cond = unit_vectors(3, 12)
    batch = model.sample(cond, [1, 2, 3], steps=3, guidance_scale=2.0, output_size=24)
    again = model.sample(cond, [1, 2, 3], steps=3, guidance_scale=2.0, output_size=24)
    alone = model.sample(cond[1:2], [2], steps=3, guidance_scale=2.0, output_size=24)
    assert [im.size for im in batch] == [(24, 24)] * 3
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(batch, again, strict=True))
    assert np.abs(pixels(batch[1]) - pixels(alone[0])).max() <= 1  # same picture, any batch
    other = model.sample(cond[1:2], [99], steps=3, guidance_scale=2.0, output_size=24)
    assert not np.array_equal(pixels(other[0]), pixels(alone[0]))


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_samplers_and_guidance_off(model, unit_vectors, sampler):
    images = model.sample(unit_vectors(2, 12), [5, 6], steps=2, guidance_scale=1.0, sampler=sampler)
    assert [im.size for im in images] == [(16, 16)] * 2


def test_training_loss_is_finite_and_reproducible(model, unit_vectors):
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    cond = torch.from_numpy(unit_vectors(4, 12))
    with torch.no_grad():
        a = model.training_loss(images, cond, 0.5, torch.Generator().manual_seed(3))
        b = model.training_loss(images, cond, 0.5, torch.Generator().manual_seed(3))
        c = model.training_loss(images, cond, 0.5, torch.Generator().manual_seed(3), autocast_bf16=True)
    assert torch.isfinite(a) and a.item() == b.item()
    assert abs(c.item() - a.item()) < 0.05 * a.item()


def test_save_load_round_trip_and_bf16(model, unit_vectors, tmp_path):
    model.save(tmp_path / "m", {"encoder_version": "x"})
    loaded = ThumbnailModel.load(tmp_path / "m")
    cond = unit_vectors(2, 12)
    a = model.sample(cond, [1, 2], steps=2)
    b = loaded.sample(cond, [1, 2], steps=2)
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b, strict=True))
    assert loaded.meta["encoder_version"] == "x" and loaded.meta["cond_dim"] == 12
    half = ThumbnailModel.load(tmp_path / "m", precision="bfloat16")
    assert half.dtype == torch.bfloat16
    c = half.sample(cond, [1, 2], steps=2)
    assert np.abs(pixels(c[0]) - pixels(a[0])).mean() < 20  # close to fp32, not bit-equal


def test_wrong_conditioning_is_a_clear_error(model, unit_vectors):
    with pytest.raises(ConditioningError, match=r"expected shape \(n, 12\)"):
        model.sample(unit_vectors(2, 8), [1, 2])
    bad = unit_vectors(2, 12)
    bad[1, 0] = np.nan
    with pytest.raises(ConditioningError, match=r"non-finite values in rows \[1\]"):
        model.sample(bad, [1, 2])
    with pytest.raises(ValueError, match="3 seeds for 2 conditions"):
        model.sample(unit_vectors(2, 12), [1, 2, 3])
    assert model.sample(np.zeros((0, 12), np.float32), []) == []


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="config.json is missing.*recsys thumbnails train"):
        ThumbnailModel.load(tmp_path / "nowhere")


def test_unet_config_not_matching_weights(model, tmp_path):
    folder = model.save(tmp_path / "m")
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["block_out_channels"] = [16, 48]  # edited after training
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not match the UNet config"):
        ThumbnailModel.load(folder)
    config["block_out_channels"] = [16, 30]  # not even a valid UNet (group norm of 8)
    config_file.write_text(json.dumps(config))
    with pytest.raises(CheckpointError):
        ThumbnailModel.load(folder)


def test_resolution_must_fit_the_levels():
    with pytest.raises(ValueError, match="divisible by 2\\^2"):
        ThumbnailModel.create(ThumbnailConfig(resolution=18, channels=(16, 32, 64)), cond_dim=4)
    with pytest.raises(ValueError, match="multiples of 8"):
        ThumbnailConfig(channels=(12, 24))


def test_a_short_training_run_learns_to_follow_the_condition(unit_vectors):
    """Two conditions, two colours: after a short run, red prompts draw redder pictures than blue."""
    cfg = ThumbnailConfig(resolution=8, channels=(16, 32))
    model = ThumbnailModel.create(cfg, cond_dim=16, seed=0)
    red, blue = unit_vectors(2, 16, seed=3)
    images = torch.zeros(32, 3, 8, 8) - 1
    images[:16, 0] = 0.8   # red
    images[16:, 2] = 0.8   # blue
    cond = torch.from_numpy(np.stack([red] * 16 + [blue] * 16))
    opt = torch.optim.AdamW(model.unet.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = model.training_loss(images, cond, 0.1, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    drawn = model.sample(np.stack([red] * 4 + [blue] * 4), list(range(8)), steps=8, guidance_scale=2.0)
    rgb = np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in drawn])
    redness = rgb[:, 0] - rgb[:, 2]
    assert redness[:4].min() > redness[4:].max()
    assert redness[:4].mean() - redness[4:].mean() > 100
