"""Backfill throughput: end-to-end vs the raw model forward, fp32 vs bf16, against matmul peak.

For each model (the embedded `recsys-clip-tiny` at 64 px and ViT-B-32 at 224 px, random weights)
and precision (float32, bfloat16 weights):
  * raw image forward: `encode_pixels` on pre-decoded, preprocessed tensors (images/s);
  * raw item forward: image + text forward per item (what the backfill computes per item);
  * end-to-end: `training.backfill.backfill` over a catalogue of JPEG files on disk (hash, read,
    decode + preprocess in a DataLoader worker, both towers, fusion, shard writes, consolidation),
    items/s over the embedding loop;
  * achieved GFLOP/s of the image forward (FLOPs counted by torch's FlopCounterMode) against a
    matmul peak measured in the same run at the same precision, on the same device.

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 .venv/bin/python benchmarks/backfill.py

`--device cuda` (or `auto`) runs the encoders on a GPU; `--skip-e2e` leaves out the end-to-end
backfill (it logs an MLflow run), for a machine with torch and open_clip only.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import UTC, datetime

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from recsys.config import load_settings  # noqa: E402
from recsys.data import columns as C  # noqa: E402
from recsys.data.tables import save_table  # noqa: E402
from recsys.embeddings.config import ClipConfig  # noqa: E402
from recsys.embeddings.encoder import ClipEncoder  # noqa: E402
from recsys.runtime import resolve_device  # noqa: E402
from recsys.workspace import Workspace  # noqa: E402
from training.backfill import backfill  # noqa: E402


def matmul_peak(dtype: torch.dtype, device: str, seconds: float = 1.0) -> float:
    """GFLOP/s of square matmuls (1024² on a CPU, 8192² on a GPU, where smaller ones leave it idle)."""
    n = 8192 if device.startswith("cuda") else 1024
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    a @ b
    _sync(device)
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def image_flops(encoder: ClipEncoder) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    # with autograd on: under inference_mode nn.MultiheadAttention takes a fused kernel the
    # counter does not see (ViT-B-32 would read 5.9 instead of 8.8 GFLOP)
    x = torch.randn(1, 3, encoder.image_size, encoder.image_size, device=encoder.device, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        encoder.model.encode_image(x.to(encoder.dtype))
    return float(counter.get_total_flops())


def timed(fn, n_items: int, repeat: int = 2) -> float:
    """Best items/s over `repeat` runs (after one warm-up call inside fn's first run)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = max(best, n_items / (time.perf_counter() - start))
    return best


def make_catalogue(ws: Workspace, n: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    texts, rows = [], []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 60 + rng.integers(0, 190, 3)).astype(np.uint8)
        path = ws.images_dir / f"b{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        text = f"A {['red', 'blue', 'green'][i % 3]} item number {i} with a plain pattern, ships fast"
        texts.append(text)
        rows.append({C.ITEM_ID: f"b{i:05d}", C.TITLE: f"item {i}", C.DESCRIPTION: text, C.CATEGORY: "x",
                     C.PRICE: 1.0, C.IMAGE_URI: str(path), C.IMAGE_SOURCE: "original",
                     C.CREATED_AT: datetime(2024, 1, 1, tzinfo=UTC)})
    save_table(ws, "items", pl.DataFrame(rows))
    return texts


def run(model: str, n: int, source_px: int, batch: int, workers: int, device: str = "cpu",
        e2e: bool = True) -> list[dict]:
    """One row per precision; `e2e` False leaves the end-to-end column out (NaN)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(**{"home": tmp, "device": device, "clip.model": model,
                                    "clip.batch_size": batch, "clip.workers": workers,
                                    "clip.shard_rows": 10_000})
        ws = Workspace.at(tmp)
        texts = make_catalogue(ws, n, source_px)
        for precision, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            torch.manual_seed(0)
            cfg = ClipConfig(model=model, precision=precision, batch_size=batch, workers=workers)
            enc = ClipEncoder(cfg, device=device)
            pixels = torch.stack([enc.preprocess(Image.open(ws.images_dir / f"b{i:05d}.jpg").convert("RGB"))
                                  for i in range(n)])
            tokens = enc.tokenize(texts)
            enc.encode_pixels(pixels[:batch])  # warm-up

            def images_only(enc=enc, pixels=pixels) -> None:
                for s in range(0, n, batch):
                    enc.encode_pixels(pixels[s:s + batch])

            def both(enc=enc, pixels=pixels, tokens=tokens) -> None:
                for s in range(0, n, batch):
                    enc.encode_pixels(pixels[s:s + batch])
                    enc.encode_tokens(tokens[s:s + batch])

            raw_img = timed(images_only, n)
            raw_item = timed(both, n)
            run_settings = settings.model_copy(update={"clip": settings.clip.model_copy(
                update={"precision": precision})})
            e2e_rate = max(backfill(run_settings, ws, force=True, push_to_feast=False,
                                    encoder=enc).items_per_s for _ in range(2)) if e2e else float("nan")
            flops = image_flops(enc)
            peak = matmul_peak(dtype, device)
            out.append({"model": f"{model} @{enc.image_size}px", "precision": precision,
                        "raw img/s": raw_img, "raw item/s": raw_item, "e2e item/s": e2e_rate,
                        "e2e/raw": e2e_rate / raw_item, "GFLOP/img": flops / 1e9,
                        "GFLOP/s": raw_img * flops / 1e9, "matmul peak": peak,
                        "% peak": 100 * raw_img * flops / 1e9 / peak})
            print(_fmt(out[-1]), flush=True)
    return out


def _fmt(r: dict) -> str:
    return (f"| {r['model']} | {r['precision']} | {r['raw img/s']:.1f} | {r['raw item/s']:.1f} | "
            f"{r['e2e item/s']:.1f} | {r['e2e/raw']:.2f} | {r['GFLOP/img']:.3f} | {r['GFLOP/s']:.0f} | "
            f"{r['matmul peak']:.0f} | {r['% peak']:.0f}% |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny-images", type=int, default=512)
    p.add_argument("--vit-images", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vit-batch", type=int, default=16)
    p.add_argument("--skip-vit", action="store_true")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (CUDA where present)")
    p.add_argument("--skip-e2e", action="store_true", help="only the raw forwards (no MLflow needed)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__} on {where}, {args.threads} thread(s), "
          f"DataLoader workers {args.workers}")
    print("| model | precision | raw img/s | raw item/s (img+text) | end-to-end item/s | e2e / raw item "
          "| GFLOP/img | img GFLOP/s | matmul peak GFLOP/s | % of peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = run("recsys-clip-tiny", args.tiny_images, 128, args.batch, args.workers, device, not args.skip_e2e)
    if not args.skip_vit:
        rows += run("ViT-B-32", args.vit_images, 256, args.vit_batch, args.workers, device, not args.skip_e2e)
    by = {(r["model"], r["precision"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        f32, b16 = by[(model, "float32")], by[(model, "bfloat16")]
        e2e = "" if args.skip_e2e else f", end-to-end = {b16['e2e item/s'] / f32['e2e item/s']:.2f}x"
        print(f"{model}: bf16 / fp32 raw images/s = {b16['raw img/s'] / f32['raw img/s']:.2f}x{e2e}")


if __name__ == "__main__":
    main()
