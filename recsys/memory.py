"""Memory plans: a heavy step's peak resident memory, estimated from sizes before it starts.

A step that outgrows the machine is killed by the kernel with nothing said. Each heavy step
(`features build`, `train retrieval` with EASE, `train ranker`, `recommend --all`) instead
builds a `MemoryPlan` from the sizes it knows up front (rows, items, users, dims), prints one
line (planned peak against the budget, `memory_gib`) and stops with `MemoryBudgetError`, naming
the setting to change and what to lower, when the plan is above the budget.

A plan is a sum of parts that are alive together at the step's peak: the libraries the process
imports (a constant per step, measured), frames already read (their `estimated_size()` times
the copies the step makes), and structures whose bytes follow from sizes (an EASE Gram matrix
is 4 n² bytes, a feature matrix rows × features × 4). Per-row coefficients of polars frames and
Python objects were fitted on `benchmarks/memory.py` logs; that benchmark prints the planned
peak beside the measured one for every step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from recsys.data import columns as C

GIB = 1024**3
MIB = 1024**2
AUTO_SHARE = 0.8  # of the machine's memory, when memory_gib is unset

# Resident memory of a step's process before its data arrives (interpreter + imports), measured.
LIBRARIES = {"features build": 950 * MIB, "train retrieval": 1050 * MIB, "train ranker": 900 * MIB,
             "recommend": 900 * MIB}


COMPILED_RANKER = 130 * MIB  # LLVM and a compiled forest (measured: 126 MiB compiling, 83 from its cache)


class MemoryBudgetError(ValueError):
    """A step's memory plan is above `memory_gib`: raised before the step does any work."""


def machine_bytes() -> int:
    """Physical memory, or the container's cgroup limit where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def budget_bytes(memory_gib: float | None) -> int:
    """The budget in bytes: `memory_gib`, or `AUTO_SHARE` of the machine's memory when unset."""
    return int(memory_gib * GIB) if memory_gib is not None else int(AUTO_SHARE * machine_bytes())


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


@dataclass(frozen=True)
class MemoryPlan:
    """Planned peak of one step: `parts` (name -> bytes) alive together, against `budget`.

    `advice` says which settings lower the biggest parts (shown when the plan does not fit)."""

    step: str
    parts: dict[str, int]
    budget: int
    advice: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return int(sum(self.parts.values()))

    def line(self) -> str:
        """One line for the step's output: planned peak vs budget, and the biggest data part."""
        data = {k: v for k, v in self.parts.items() if k != "libraries"}
        top = max(data, key=data.__getitem__) if data else None
        biggest = f"; largest: {top} {gib(data[top])}" if top else ""
        notes = "".join(f"; {n}" for n in self.notes)
        return f"memory plan: {gib(self.peak)} peak of {gib(self.budget)} budget{biggest}{notes}"

    def check(self) -> MemoryPlan:
        """Self when the plan fits the budget; else `MemoryBudgetError` naming what to change."""
        if self.peak <= self.budget:
            return self
        parts = ", ".join(f"{k} {gib(v)}" for k, v in sorted(self.parts.items(), key=lambda kv: -kv[1]))
        raise MemoryBudgetError(
            f"{self.step} plans a peak of {gib(self.peak)}, above the memory budget of {gib(self.budget)} "
            f"(memory_gib: --memory-gib / RECSYS_MEMORY_GIB). Parts: {parts}. "
            f"{self.advice + ' ' if self.advice else ''}Or raise memory_gib if the machine has the memory.")


# ---------------------------------------------------------------- per step
# Coefficients below were fitted on benchmarks/memory.py logs (20k-10M clicks, 3k-100k items);
# the benchmark prints each step's plan beside its measured peak.

EVENT_BYTES = 75  # features build: an event of the log (user, item, timestamp, clicked: about 45 bytes),
# held in one key's order, with the copy made while it is sorted (fitted on 1M and 10M clicks: 1.0 and
# 1.6 GiB measured; was 800 when the build held the whole impressions table, its normalised copy and
# the popularity ranks of every active (item, day): clicks x 7 rows)
PART_EVENT_BYTES = 10_000  # features build: a (key, event day) pair of the one part being computed
# (its snapshots with their lists, the category counts spread over 30 days, the frames in between)
PART_EVENTS = 10_000  # (key, event day) pairs of one part (features/jobs.py `PART_EVENT_DAYS`)
LOG_COPIES = 4  # train retrieval: the click log, its split parts and the known part, alive together
TWO_TOWER_WORK_BYTES = 160  # train retrieval: per training click, besides the examples kept: the sorted
# frame and int64 work arrays while the histories are made, the epoch's permutation, the fit's state and
# what the allocator keeps of them (measured at 10M clicks: the two-tower added 1.94 GiB for 8.05M train
# clicks; planned 1.23 GiB before this part)
EVALUATION_BYTES = 300  # train retrieval: per training click, the test table's work: the known log (train +
# valid, 9/8 of the training clicks), its (user, item) pairs with their positions and their hash, each test
# user's recent clicks, the scorers' state (measured at 10M clicks: 4.53 GiB, the step's peak)


def features_build(budget: int, events: int, items: int) -> MemoryPlan:
    """`features build`: the log's four columns in memory (about 45 bytes an event, twice while
    they are sorted by key), the views computed one part of keys at a time (features/jobs.py), so
    the peak follows the compact log plus one bounded part."""
    parts = {"libraries": LIBRARIES["features build"], "event log": events * EVENT_BYTES,
             "one part of the views": min(events, PART_EVENTS) * PART_EVENT_BYTES, "items": items * 300}
    return MemoryPlan("features build", parts, budget,
                      advice="The event log is read whole: build on a shorter log (earlier events "
                             "removed) or on a machine with more memory.")


def ease_fit_bytes(n: int, gram_nonzeros: int) -> int:
    """EASE (`recsys.retrieval.ease`): the dense Gram matrix and its working copy (4 n² bytes
    each; later the model kept for the test table and the refit on all clicks), plus XᵀX in
    sparse form while it is made dense (8 bytes a non-zero)."""
    return 8 * n * n + 8 * min(gram_nonzeros, n * n)


def gram_nonzeros(clicks: pl.DataFrame) -> int:
    """An upper bound on the non-zeros of XᵀX: Σ_u c_u², c_u the distinct items user u clicked."""
    if clicks.height == 0:
        return 0
    per_user = clicks.select(C.USER_ID, C.ITEM_ID).unique().group_by(C.USER_ID).len()["len"]
    return int((per_user.cast(pl.Int64) ** 2).sum())


def train_retrieval(budget: int, log_bytes: int, embedding_bytes: int, train_clicks: int,
                    ease_items: int, ease_gram_nonzeros: int, history: int, n_features: int,
                    ease: bool) -> MemoryPlan:
    """`train retrieval`: the click log (`log_bytes` as read, with its split copies) and the item
    embeddings table, then either EASE's fit or the two-tower's examples (histories int32,
    features float32) with the work of making them and fitting (`TWO_TOWER_WORK_BYTES`) beside
    the EASE model kept for the test table, or the test table's evaluation beside that model
    (`EVALUATION_BYTES`), whichever is largest."""
    examples = train_clicks * (history * 4 + 24 + 4 * n_features + TWO_TOWER_WORK_BYTES)
    ease_peak = ease_fit_bytes(ease_items, ease_gram_nonzeros) if ease else 0
    ease_kept = 4 * ease_items * ease_items if ease else 0
    phases = {"two-tower examples": examples + ease_kept, "EASE fit": ease_peak,
              "test evaluation": train_clicks * EVALUATION_BYTES + ease_kept}
    phase = max(phases.items(), key=lambda kv: kv[1])  # the first of equal ones
    parts = {"libraries": LIBRARIES["train retrieval"], "click log": log_bytes * LOG_COPIES,
             "item embeddings": embedding_bytes * 2, phase[0]: phase[1]}
    return MemoryPlan("train retrieval", parts, budget,
                      advice=f"Lower retrieval.ease_max_items (EASE: ~8-16 n² bytes, n = {ease_items:,}) "
                             f"or retrieval.history ({history}), or turn EASE off (retrieval.ease false).")


def ranker_row_bytes(n_features: int) -> int:
    """A training row at the peak: the candidate frame (ids, scores, ranks: ~100 bytes), the float32
    feature matrix, the champion's matrix when it is scored, and LightGBM's binned copy."""
    return 100 + n_features * (4 + 4 + 1)


def train_ranker(budget: int, log_bytes: int, item_bytes: int, ease_items: int, ease_gram_nonzeros: int,
                 rows: int, n_features: int, max_rows: int) -> MemoryPlan:
    """`train ranker`: the log and the item table (CLIP vectors), then either the EASE refit on
    the candidate models' part (its weights, 4 n² bytes, and XᵀX in sparse form while it is made
    dense) or the training rows (at most `ranker.max_rows`, groups sampled to it) beside those
    weights, whichever is larger. The champion EASE's weights are memory-mapped, read by rows."""
    kept = min(rows, max_rows)
    weights = 4 * ease_items * ease_items
    fit = weights + 8 * min(ease_gram_nonzeros, ease_items * ease_items)
    training = weights + kept * ranker_row_bytes(n_features)
    phase = ("training rows", training) if training >= fit else ("EASE base fit", fit)
    parts = {"libraries": LIBRARIES["train ranker"], "click log": log_bytes * LOG_COPIES,
             "item table": item_bytes, phase[0]: phase[1]}
    notes = [f"{kept:,} of up to {rows:,} candidate rows (ranker.max_rows)"] if rows > max_rows else []
    return MemoryPlan("train ranker", parts, budget, notes=notes,
                      advice=f"Lower ranker.max_rows ({max_rows:,}: query groups are sampled to it) or "
                             f"retrieval.ease_max_items ({ease_items:,}).")


USER_STATE_CLICK = 150  # recommend: a click as Python objects (str in a list and a set)


# recommend: a row of the item_behaviour source while each item's latest is picked (read in record
# batches, `recsys.data.snapshots`; measured 0.36 GiB peak for 39M snapshots, polars included)
ITEM_SNAPSHOT_ROW = 10


def recommend(budget: int, log_bytes: int, log_rows: int, users: int, item_bytes: int, ease_items: int,
              k: int, item_snapshots: int = 0, compiled: bool = False) -> MemoryPlan:
    """`recommend`: the log, each user's clicks as Python objects, the item table and vectors,
    EASE's weights (4 n² bytes), the item_behaviour source's rows (`item_snapshots`) read to pick
    each item's latest, each user's latest behaviour snapshot and the output rows; `compiled`:
    LLVM and the ranker's compiled trees (`ranker.compile`)."""
    parts = {"libraries": LIBRARIES["recommend"] + (COMPILED_RANKER if compiled else 0),
             "click log": log_bytes * 2,
             "item behaviour source": item_snapshots * ITEM_SNAPSHOT_ROW,
             "user state": log_rows * USER_STATE_CLICK, "item table": item_bytes,
             "EASE weights": 4 * ease_items * ease_items, "output rows": users * k * 200,
             "user features": users * 1500}
    return MemoryPlan("recommend", parts, budget,
                      advice=f"Lower retrieval.ease_max_items ({ease_items:,}) and retrain, or recommend "
                             "for fewer users at a time (--users FILE).")
