"""Process-wide runtime policy: threads and torch device.

On 2 cores an OpenMP pool whose second core is busy spins and collapses (LightGBM and
diffusers were measured 10-60x slower). Every entry point calls `configure_threads` first, before
torch, LightGBM or numpy start their pools, and every torch path asks `resolve_device`.
"""

from __future__ import annotations

import os


def configure_threads(threads: int) -> None:
    """Make OpenMP pools passive and cap thread counts for this process and its children."""
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import sys

    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(threads)


def resolve_device(device: str) -> str:
    """`auto` means CUDA where present, else CPU; anything else is passed through to torch."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
