"""The fault suite's world: one small trained workspace (world with images, CLIP vectors from a
local checkpoint, Feast features, two-tower, ranker), built once and copied per fault, and the
table of results printed at the end of the run (the README's "Faults" table comes from it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fault_helpers import RESULTS

from recsys.config import Settings, load_settings
from recsys.workspace import Workspace

CONFIG = """\
seed = 11
device = "cpu"
threads = 1

[world]
items = 150
users = 150
days = 10
impressions = 8000
image_size = 32

[clip]
shard_rows = 16
workers = 0
batch_size = 16
pretrained = "{checkpoint}"

[retrieval]
epochs = 1
batch_size = 256

[ranker]
rounds = 20

[serving]
api_key = "fault-suite-admin-key"
"""


@dataclass
class FaultWorld:
    """A copy of the trained workspace for one test: its settings and the env its commands get."""

    home: Path
    config: Path
    seconds: dict[str, float] = field(default_factory=dict)  # how long a stage takes, with start-up

    @property
    def ws(self) -> Workspace:
        return Workspace.at(self.home)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "RECSYS_HOME": str(self.home), "RECSYS_CONFIG": str(self.config),
                "OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": "1"}

    def settings(self, **overrides: object) -> Settings:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("RECSYS_CONFIG", str(self.config))
            mp.setenv("RECSYS_HOME", str(self.home))
            return load_settings(home=str(self.home), **overrides)


@pytest.fixture(scope="session")
def fault_template(tmp_path_factory: pytest.TempPathFactory) -> FaultWorld:
    """Built once per session with the real pipeline, in process."""
    import torch

    from features.jobs import build_features, materialize
    from recsys.data.world import generate_world
    from recsys.embeddings.config import ClipConfig
    from recsys.embeddings.encoder import ClipEncoder
    from training.backfill import backfill
    from training.ranker import train_ranker
    from training.retrieval import train_retrieval

    root = tmp_path_factory.mktemp("faults")
    torch.manual_seed(0)
    checkpoint = ClipEncoder(ClipConfig()).save_checkpoint(root / "clip.pt")
    config = root / "faults.toml"
    config.write_text(CONFIG.format(checkpoint=checkpoint.as_posix()))
    world = FaultWorld(root / "template" / "ws", config)
    settings, ws = world.settings(), world.ws
    generate_world(settings.world, settings.seed, ws)
    # what a command spends importing before it works (the kill points spread over both)
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "import feast, mlflow, torch, lightgbm, training.ranker"],
                   check=True, env=world.env)
    startup = time.monotonic() - t0
    stages = {"backfill": lambda: backfill(settings, ws),
              "features": lambda: build_features(settings, ws),  # what `recsys features build` does
              "materialize": lambda: materialize(settings, ws),
              "retrieval": lambda: train_retrieval(settings, ws),
              "ranker": lambda: train_ranker(settings, ws, promote=True)}
    for name, stage in stages.items():
        t0 = time.monotonic()
        stage()
        world.seconds[name] = startup + time.monotonic() - t0
    return world


@pytest.fixture
def fault_world(fault_template: FaultWorld, tmp_path: Path) -> Iterator[FaultWorld]:
    """A private copy of the trained workspace (a copy works where it lies: its MLflow store and
    Feast registry are re-pointed on first open)."""
    home = tmp_path / "ws"
    shutil.copytree(fault_template.home, home)
    yield FaultWorld(home, fault_template.config, fault_template.seconds)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("faults")
    tr.write_line("| Fault | Trials | Killed mid-run | Survived | Rows lost |")
    tr.write_line("|---|---|---|---|---|")
    for r in RESULTS.values():
        tr.write_line(f"| {r.fault} | {r.trials} | {r.killed} | {r.survived} | {r.rows_lost} |")
