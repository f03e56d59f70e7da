"""The real path: a diffusers StableDiffusionPipeline saved to disk and loaded back offline.

The pipeline is tiny and randomly initialised (its pictures mean nothing); what is tested is the
loading and generation code that a real one (BK-SDM-Tiny, tiny-sd, sd-turbo) goes through.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from recsys.thumbnails.backends import PipelineThumbnailer, load_pipeline, pipeline_thumbnailer
from recsys.thumbnails.config import ThumbnailConfig
from recsys.thumbnails.model import CheckpointError


def clip_tokenizer():
    """A CLIP tokenizer from open_clip's bundled BPE (no download), with HF's special-token names."""
    import open_clip
    from transformers import CLIPTokenizer

    tok = open_clip.tokenizer.SimpleTokenizer()
    vocab = dict(tok.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    with gzip.open(open_clip.tokenizer.default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=77, projection_dim=32))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=8, attention_head_dim=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, norm_num_groups=8, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=DDPMScheduler(steps_offset=1, clip_sample=False),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    pipe.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("sampler", ["dpm", "ddim"])
def test_saved_pipeline_loads_offline_and_generates_deterministically(pipeline_dir, sampler):
    cfg = ThumbnailConfig(backend="pipeline", pipeline=str(pipeline_dir), pipeline_resolution=16,
                          output_size=24, sampler=sampler)
    thumbs = pipeline_thumbnailer(cfg, "cpu")
    assert isinstance(thumbs, PipelineThumbnailer) and thumbs.name == str(pipeline_dir)
    prompts = ["a red circle", "白い背景に赤い丸", "a blue square, " * 200]  # long: truncated to 77 tokens
    a = thumbs.generate(prompts, [1, 2, 3], steps=2, guidance_scale=3.0)
    b = thumbs.generate(prompts[1:2], [2], steps=2, guidance_scale=3.0)
    assert [im.size for im in a] == [(24, 24)] * 3
    assert np.abs(np.asarray(a[1], int) - np.asarray(b[0], int)).max() <= 2  # own seed, any batch


def test_missing_or_wrong_pipeline_is_a_clear_error(tmp_path, pipeline_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pipeline(str(tmp_path / "no-such-pipeline"))
    with pytest.raises(CheckpointError, match="no model_index.json"):
        load_pipeline(str(pipeline_dir / "unet"))
    with pytest.raises(CheckpointError, match="thumbnails.pipeline .* is not set"):
        pipeline_thumbnailer(ThumbnailConfig(backend="pipeline"), "cpu")
    with pytest.raises(CheckpointError, match="cannot load the diffusers pipeline 'nobody/no-such-model'"):
        load_pipeline("nobody/no-such-model")
