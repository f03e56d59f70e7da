"""Thumbnail model speed: seconds per generated thumbnail and training steps/s, fp32 vs bf16.

The embedded UNet at its default config (32 px, channels 32/64/128, no attention, conditioned on
a 128-d CLIP vector: the width of `recsys-clip-tiny`), random weights (speed does not depend on
training). Generation: the default sampler (DPM-Solver++, 15 steps, classifier-free guidance, so
each step runs the UNet on a doubled batch) for batches of 16 and 1, fp32 weights vs bf16 weights.
Training: steps/s at batch 32, fp32 vs bf16 autocast (fp32 master weights). Each figure is the
best of `--reps` timed runs after one warm-up; baselines (fp32, batch 16) are measured in the
same run.

    OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 RECSYS_PROGRESS=0 .venv/bin/python benchmarks/thumbnails.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recsys.thumbnails.config import ThumbnailConfig  # noqa: E402
from recsys.thumbnails.model import ThumbnailModel  # noqa: E402


def best_of(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cond-dim", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ThumbnailConfig()
    rng = np.random.default_rng(0)
    cond = rng.normal(size=(32, args.cond_dim)).astype(np.float32)
    cond /= np.linalg.norm(cond, axis=1, keepdims=True)
    print(f"UNet {cfg.resolution} px, channels {cfg.channels}, {cfg.sampler} {cfg.steps} steps, "
          f"guidance {cfg.guidance_scale}, {args.threads} thread(s), best of {args.reps}")

    gen: dict[tuple[str, int], float] = {}
    for precision in ("float32", "bfloat16"):
        model = ThumbnailModel.create(cfg, args.cond_dim, seed=0).to("cpu", precision)
        for batch in (16, 1):
            secs = best_of(lambda m=model, b=batch: m.sample(cond[:b], list(range(b)), cfg.steps,
                                                              cfg.guidance_scale, cfg.sampler,
                                                              cfg.output_size), args.reps)
            gen[(precision, batch)] = secs / batch
    base = gen[("float32", 16)]
    print("\ngeneration (seconds per thumbnail, 128 px PNG-ready)")
    print("| precision | batch 16 | batch 1 | vs fp32 batch 16 |")
    print("| --- | --- | --- | --- |")
    for precision in ("float32", "bfloat16"):
        b16, b1 = gen[(precision, 16)], gen[(precision, 1)]
        print(f"| {precision} | {b16:.3f} s | {b1:.3f} s | {base / b16:.2f}x / {base / b1:.2f}x |")

    print("\ntraining (batch 32, AdamW step incl. backward)")
    print("| precision | steps/s | s/step | vs fp32 |")
    print("| --- | --- | --- | --- |")
    images = torch.rand(32, 3, cfg.resolution, cfg.resolution) * 2 - 1
    cond_t = torch.from_numpy(cond)
    train: dict[str, float] = {}
    for precision in ("float32", "bfloat16"):
        model = ThumbnailModel.create(cfg, args.cond_dim, seed=0)
        opt = torch.optim.AdamW(model.unet.parameters(), lr=1e-4)
        gen_t = torch.Generator().manual_seed(0)

        def step(m=model, o=opt, g=gen_t, bf16=precision == "bfloat16") -> None:
            loss = m.training_loss(images, cond_t, 0.1, g, autocast_bf16=bf16)
            o.zero_grad()
            loss.backward()
            o.step()

        train[precision] = best_of(lambda s=step: [s() for _ in range(3)], args.reps) / 3
    for precision, secs in train.items():
        print(f"| {precision} | {1 / secs:.2f} | {secs:.3f} | {train['float32'] / secs:.2f}x |")
    n = 1500
    epochs = cfg.epochs
    print(f"\ndefault training on the default world (~{n} imaged items, {epochs} epochs, "
          f"{n // cfg.batch_size * epochs} steps): ~{n // cfg.batch_size * epochs * train['bfloat16']:.0f} s "
          f"of steps with bf16 autocast, ~{n // cfg.batch_size * epochs * train['float32']:.0f} s with fp32")


if __name__ == "__main__":
    main()
