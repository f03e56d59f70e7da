"""The open_clip encoder: images and texts to L2-normalised vectors, and their fusion.

Speed choices measured on this CPU (see STACK-NOTES): bfloat16 runs by casting the weights
(`torch.autocast` on CPU collapsed at batch 16); causal text towers see their batch trimmed to
its longest text (the causal mask makes the padding irrelevant to the pooled token: identical
outputs, ~3x faster).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys.config import Settings
from recsys.embeddings.config import ClipConfig

log = logging.getLogger(__name__)
MODEL_CONFIGS = Path(__file__).parent / "model_configs"
CHECKPOINT_FILE = "clip.pt"
_registered = False


def register_model_configs() -> None:
    """Make the model configs shipped with recsys (e.g. `recsys-clip-tiny`) known to open_clip."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(MODEL_CONFIGS)
    _registered = True


def create_clip(model: str, pretrained: str | None = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """Build an open_clip model; `pretrained` is a hub tag, a local checkpoint file, or None
    (random weights). Returns (model, train preprocess, eval preprocess)."""
    register_model_configs()
    import open_clip

    if pretrained and Path(pretrained).suffix and not Path(pretrained).exists():
        raise FileNotFoundError(f"clip.pretrained: checkpoint file {pretrained} does not exist")
    try:
        with _quiet_random_init_warning():
            return open_clip.create_model_and_transforms(
                model, pretrained=pretrained or None, device=device, output_dict=True
            )
    except RuntimeError as exc:
        if pretrained and not Path(pretrained).exists():
            raise RuntimeError(
                f"cannot load open_clip weights '{pretrained}' for model '{model}': hub tags need "
                "internet access; download the file once and set clip.pretrained to its path"
            ) from exc
        raise


class _quiet_random_init_warning:
    """open_clip logs a warning for random weights on the root logger; we mean it."""

    def __enter__(self) -> None:
        self._level = logging.root.level
        logging.root.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.root.setLevel(self._level)


def _file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:12]


class ClipEncoder:
    """Batched, L2-normalised image and text embeddings from one open_clip model.

    `version` names the weights (stamped into `item_embeddings.model_version` and the content
    hash): the registry tag (`clip/v3`) for a fine-tuned model, `<model>:<tag>` for hub
    weights, `<model>:sha256:<12 hex>` for a local file, `<model>:random` otherwise.
    """

    def __init__(self, config: ClipConfig, device: str = "cpu", checkpoint: str | Path | None = None,
                 version: str | None = None, model_name: str | None = None):
        import torch

        self.config = config
        self.device = device
        self.model_name = model_name or config.model
        weights = str(checkpoint) if checkpoint is not None else config.pretrained
        model, self.preprocess_train, self.preprocess = create_clip(self.model_name, weights, device)
        self.dtype = torch.bfloat16 if config.precision == "bfloat16" else torch.float32
        self.model = model.to(dtype=self.dtype).eval()
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(self.model_name)
        self.version = version or self._default_version(weights)
        self.dim = int(self._output_dim())
        self.image_size = model_image_size(self.model)

    def _default_version(self, weights: str | None) -> str:
        if not weights:
            return f"{self.model_name}:random"
        if Path(weights).exists():
            return f"{self.model_name}:sha256:{_file_digest(weights)}"
        return f"{self.model_name}:{weights}"

    def _output_dim(self) -> int:
        visual = self.model.visual
        if getattr(visual, "output_dim", None):
            return visual.output_dim
        proj = getattr(visual, "proj", None)
        return proj.shape[1]

    @property
    def text_is_causal(self) -> bool:
        return trimmable_text(self.model)

    def tokenize(self, texts: Sequence[str]) -> Any:
        return self.tokenizer([t or "" for t in texts])

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images -> (n, dim) float32, L2-normalised."""
        import torch

        if not len(images):
            return np.zeros((0, self.dim), np.float32)
        out = []
        bs = self.config.batch_size
        for start in range(0, len(images), bs):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + bs]])
            out.append(self.encode_pixels(batch))
        return np.concatenate(out)

    def encode_pixels(self, pixels: Any) -> np.ndarray:
        """Preprocessed image tensors (n, 3, H, W) -> (n, dim) float32, L2-normalised."""
        import torch

        with torch.inference_mode():
            x = pixels.to(self.device, dtype=self.dtype)
            feats = self.model.encode_image(x)
            return _normalise(feats)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (n, dim) float32, L2-normalised; batches trimmed to their longest text."""
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        out = []
        bs = self.config.batch_size
        for start in range(0, len(texts), bs):
            out.append(self.encode_tokens(self.tokenize(texts[start:start + bs])))
        return np.concatenate(out)

    def encode_tokens(self, tokens: Any) -> np.ndarray:
        """Token ids (n, context) -> (n, dim) float32, L2-normalised."""
        import torch

        with torch.inference_mode():
            feats = encode_text(self.model, tokens.to(self.device))
            return _normalise(feats)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the weights (float32 state_dict) where open_clip's `pretrained=` can load them."""
        return save_checkpoint(self.model, path)


def _normalise(feats: Any) -> np.ndarray:
    import torch

    feats = torch.nn.functional.normalize(feats.float(), dim=-1)
    return feats.cpu().numpy().astype(np.float32, copy=False)


def model_image_size(model: Any) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def trimmable_text(model: Any) -> bool:
    """True where padding cannot change the pooled text feature: a causal mask and the
    end-of-text token pooled (the built-in CLIP text tower)."""
    return (
        hasattr(model, "token_embedding")
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
    )


def encode_text(model: Any, tokens: Any) -> Any:
    """Unnormalised text features. Where the tower is causal, tokens are trimmed to the longest
    non-padding sequence in the batch first (identical output, less work); also used in training."""
    if not trimmable_text(model):
        return model.encode_text(tokens)
    from open_clip.transformer import text_global_pool

    length = int((tokens != 0).sum(dim=1).max().clamp(min=1))
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:
        import torch

        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def save_checkpoint(model: Any, path: str | Path) -> Path:
    import torch

    from recsys.io import atomic_path

    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return Path(path)


def fuse(image_vecs: np.ndarray, text_vecs: np.ndarray, has_image: np.ndarray,
         image_weight: float) -> np.ndarray:
    """Item vector = normalise(w * image + (1 - w) * text); text only where there is no image.

    image_vecs, text_vecs: (n, d) L2-normalised (image rows are ignored where `has_image` is
    False, so they may hold zeros or NaN); has_image: (n,) bool. Returns (n, d) float32.
    """
    text = np.asarray(text_vecs, dtype=np.float32)
    has = np.asarray(has_image, dtype=bool)[:, None]
    image = np.where(has, np.nan_to_num(np.asarray(image_vecs, dtype=np.float32)), 0.0)
    mixed = np.where(has, image_weight * image + (1.0 - image_weight) * text, text)
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    return (mixed / np.maximum(norms, 1e-12)).astype(np.float32)


class NoTrainedEncoder(LookupError):
    """No fine-tuned CLIP in the registry and no pretrained weights configured."""


def load_trained_encoder(settings: Settings) -> ClipEncoder:
    """The encoder the backfill uses: `models:/clip@champion` from MLflow; otherwise the
    configured pretrained weights (`clip.pretrained`); otherwise an error saying what to run."""
    from recsys import tracking
    from recsys.runtime import resolve_device

    device = resolve_device(settings.device)
    try:
        folder, ref = tracking.download_model(settings, "models:/clip@champion")
    except LookupError as exc:
        if settings.clip.pretrained:
            return ClipEncoder(settings.clip, device=device)
        raise NoTrainedEncoder(
            "no CLIP encoder: none is registered as models:/clip@champion in "
            f"{tracking.tracking_uri(settings)} and clip.pretrained is not set. Run "
            "`recsys clip finetune` first (or set clip.pretrained to a checkpoint file)."
        ) from exc
    meta = json.loads((folder / "meta.json").read_text())
    return ClipEncoder(settings.clip, device=device, checkpoint=folder / CHECKPOINT_FILE,
                       version=ref.tag, model_name=meta.get("model", settings.clip.model))
