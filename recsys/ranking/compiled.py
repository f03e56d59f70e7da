"""The ranker's trees compiled to machine code, for the request path.

LightGBM walks its trees in an interpreter: ~1 ms for 385 candidates x 119 trees, a third of a
request's CPU. `lleaves` compiles the same model text with LLVM into one function per forest
(~1 s once; ~15x faster on such batches, the same double-precision comparisons, so the same
scores). One difference: LightGBM takes any |x| <= 1e-35 (its `kZeroThreshold`) as zero where a
split treats zeros as missing, lleaves only 0 itself; rows holding such a value (never seen in
practice) are scored by LightGBM. A compiled forest is only used after it reproduced LightGBM's
scores on probe rows built from the model's own split thresholds (each threshold and its float32
neighbours, zero and NaN, so both branches of every split and the missing-value paths are taken);
otherwise, or where lleaves or LLVM is missing, LightGBM predicts as before.

The compiled object is specific to the host CPU and the LLVM version: it is cached under the
workspace's model folder by a hash of the model text and both, and written atomically.
"""

from __future__ import annotations

import hashlib
import logging
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from recsys.io import atomic_path, remove_stale_temps

log = logging.getLogger(__name__)

PROBE_ROWS = 2048
TOLERANCE = 1e-9
ZERO = float(np.float32(1e-35))  # LightGBM's kZeroThreshold (a float), as a double


class TreeScorer(Protocol):
    """Raw scores of a forest for rows of a (n, features) matrix."""

    def predict(self, x: np.ndarray, threads: int = 1) -> np.ndarray: ...


class LightGBMTrees:
    """LightGBM's own predictor (the reference)."""

    def __init__(self, booster: Any) -> None:
        self.booster = booster

    def predict(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        return self.booster.predict(x, num_threads=threads)


class CompiledTrees:
    """A forest compiled by lleaves; input as float64 (LightGBM compares doubles too). Rows with
    a value in 0 < |x| <= `ZERO` go to `reference` (see the module's docstring)."""

    def __init__(self, model: Any, reference: TreeScorer) -> None:
        self.model = model
        self.reference = reference

    def predict(self, x: np.ndarray, threads: int = 1) -> np.ndarray:
        x64 = np.ascontiguousarray(x, dtype=np.float64)
        out = self.model.predict(x64, n_jobs=threads)
        size = np.abs(x64)
        tiny = ((size <= ZERO) & (size > 0)).any(axis=1)
        if tiny.any():
            out[tiny] = self.reference.predict(x64[tiny], threads)
        return out


def probe_rows(booster: Any, n: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """(n, features) float32 rows (as the ranker's feature rows are) whose values are the
    model's split thresholds and their float32 neighbours, 0 and NaN, mixed at random: every
    split is taken both ways somewhere."""
    frame = booster.trees_to_dataframe()
    splits = frame[frame["split_feature"].notna()]
    names = booster.feature_name()
    rng = np.random.default_rng(seed)
    x = np.zeros((n, len(names)), np.float32)
    up, down = np.float32(np.inf), np.float32(-np.inf)
    for j, name in enumerate(names):
        values: list[float] = [0.0, np.nan]
        for t in splits.loc[splits["split_feature"] == name, "threshold"]:
            if isinstance(t, str):  # a categorical split: "1||3||5"
                values += [float(c) for c in t.split("||")] + [float(t.split("||")[-1]) + 1]
            else:
                with np.errstate(over="ignore"):  # LightGBM's 1e300 thresholds: inf in float32
                    f = np.float32(t)
                values += [f, np.nextafter(f, up), np.nextafter(f, down)]
        x[:, j] = rng.choice(np.asarray(values, np.float32), size=n)
    return x


def cache_key(model_file: Path) -> str:
    """A hash of the model text, lleaves' and LLVM's versions and the host CPU."""
    import llvmlite.binding as llvm

    h = hashlib.sha256(model_file.read_bytes())
    h.update(f"{version('lleaves')} {version('llvmlite')} {llvm.get_host_cpu_name()} "
             f"{llvm.get_host_cpu_features().flatten()}".encode())
    return h.hexdigest()[:24]


def compile_trees(model_file: Path, booster: Any, cache_dir: Path) -> TreeScorer:
    """The compiled forest of `model_file` where it reproduces `booster` on probe rows, else
    `LightGBMTrees(booster)` (with a warning saying why)."""
    reference = LightGBMTrees(booster)
    try:
        import lleaves

        model = lleaves.Model(model_file=str(model_file))
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = cache_dir / f"{cache_key(model_file)}.o"
        if cached.exists():
            model.compile(cache=str(cached))
        else:  # lleaves writes its cache file where none exists: a temp one, renamed when whole
            remove_stale_temps(cache_dir, ["*.o"], time.time() - 3600)  # a killed compile's
            with atomic_path(cached) as tmp:
                tmp.unlink()
                model.compile(cache=str(tmp))
        compiled = CompiledTrees(model, reference)
        x = probe_rows(booster)
        diff = float(np.max(np.abs(compiled.predict(x) - reference.predict(x))))
    except Exception as exc:  # noqa: BLE001 - any failure leaves the reference predictor in place
        log.warning("the ranker's trees were not compiled (%s: %s); LightGBM predicts",
                    type(exc).__name__, exc)
        return reference
    if not diff <= TOLERANCE:
        log.warning("the compiled trees differ from LightGBM by %.2g on probe rows; LightGBM predicts", diff)
        return reference
    return compiled
