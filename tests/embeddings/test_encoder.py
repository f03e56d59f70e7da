"""The open_clip encoder: shapes, normalisation, exact text trimming, bf16, local checkpoints, fusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recsys.embeddings.config import ClipConfig
from recsys.embeddings.encoder import ClipEncoder, NoTrainedEncoder, fuse, load_trained_encoder

TEXTS = ["a red lamp", "Our striped blue box with a much longer description than the others, really", ""]


@pytest.fixture(scope="module")
def encoder() -> ClipEncoder:
    torch.manual_seed(0)
    return ClipEncoder(ClipConfig(batch_size=2))


def test_shapes_dtype_and_norm(encoder: ClipEncoder) -> None:
    images = [Image.new("RGB", (50, 80), c) for c in ("red", "blue", "green")]
    iv, tv = encoder.encode_images(images), encoder.encode_texts(TEXTS)
    assert iv.shape == tv.shape == (3, encoder.dim) and iv.dtype == tv.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(iv, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(tv, axis=1), 1, atol=1e-5)
    assert encoder.encode_texts([]).shape == (0, encoder.dim)
    assert encoder.version == "recsys-clip-tiny:random"


def test_trimmed_text_matches_full_context(encoder: ClipEncoder) -> None:
    assert encoder.text_is_causal
    tokens = encoder.tokenize(TEXTS)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(encoder.model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(encoder.encode_tokens(tokens), full, atol=1e-5)
    # batching (batch_size=2 splits the list) gives the same vectors as one batch
    np.testing.assert_allclose(encoder.encode_texts(TEXTS), full, atol=1e-5)


def test_local_checkpoint_loads_identically_and_bf16_agrees(encoder: ClipEncoder, tmp_path: Path) -> None:
    ckpt = encoder.save_checkpoint(tmp_path / "clip.pt")
    same = ClipEncoder(ClipConfig(pretrained=str(ckpt)))
    assert same.version.startswith("recsys-clip-tiny:sha256:")
    np.testing.assert_allclose(same.encode_texts(TEXTS), encoder.encode_texts(TEXTS), atol=1e-6)
    bf16 = ClipEncoder(ClipConfig(precision="bfloat16"), checkpoint=ckpt)
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    images = [Image.effect_noise((64, 64), 60).convert("RGB")]
    cos_i = (bf16.encode_images(images) * encoder.encode_images(images)).sum(1)
    cos_t = (bf16.encode_texts(TEXTS) * encoder.encode_texts(TEXTS)).sum(1)
    assert cos_i.min() > 0.99 and cos_t.min() > 0.99


def test_missing_checkpoint_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipEncoder(ClipConfig(pretrained=str(tmp_path / "nope.pt")))


def test_fuse_weights_and_text_only_rows() -> None:
    img = np.array([[1.0, 0.0], [np.nan, np.nan]], np.float32)
    txt = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    out = fuse(img, txt, np.array([True, False]), image_weight=0.5)
    np.testing.assert_allclose(out[0], [2**-0.5, 2**-0.5], atol=1e-6)
    np.testing.assert_allclose(out[1], [0.0, 1.0])
    np.testing.assert_allclose(fuse(img, txt, np.array([True, False]), 1.0)[0], [1.0, 0.0])


def test_load_trained_encoder_without_model_says_what_to_run(settings) -> None:
    with pytest.raises(NoTrainedEncoder, match="recsys clip finetune"):
        load_trained_encoder(settings)


def test_load_trained_encoder_falls_back_to_pretrained(settings, encoder: ClipEncoder, tmp_path: Path):
    ckpt = encoder.save_checkpoint(tmp_path / "w.pt")
    loaded = load_trained_encoder(settings.model_copy(update={"clip": settings.clip.model_copy(
        update={"pretrained": str(ckpt)})}))
    assert loaded.version.startswith("recsys-clip-tiny:sha256:")
