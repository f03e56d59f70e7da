"""Where every artifact lives: one workspace folder (default `./.recsys`, `RECSYS_HOME`).

Modules ask a `Workspace` for paths instead of building them, so the layout is written once.
What is stored inside the workspace names its files relative to the root (`portable`) and
turns them back into paths of wherever the workspace is now (`resolve`), so a workspace moved
or copied to another folder works there and never reaches back into the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Workspace:
        ws = cls(Path(root).resolve())
        ws.root.mkdir(parents=True, exist_ok=True)
        return ws

    def portable(self, path: str | Path) -> str:
        """`path` as stored: relative to the root (POSIX form) when it lies inside the workspace,
        else unchanged (absolute). The inverse of `resolve`."""
        text = str(path)
        candidate = Path(text)
        if not candidate.is_absolute() or ".." in candidate.parts:
            return text
        for root in (self.root, self.root.resolve()):
            if candidate.is_relative_to(root):
                return candidate.relative_to(root).as_posix()
        return text

    def resolve(self, stored: str | Path) -> Path:
        """A stored path (see `portable`) as a path of the workspace where it is now."""
        path = Path(stored)
        return path if path.is_absolute() else self.root / path

    def _dir(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # tables of the data contracts
    @property
    def data_dir(self) -> Path:
        return self._dir("data")

    def table(self, name: str) -> Path:
        """Path of a contract table: items, users, impressions, item_embeddings."""
        return self.data_dir / f"{name}.parquet"

    def table_history(self, name: str) -> Path:
        """Kept versions of a contract table and their manifest (see `recsys.data.history`)."""
        return self._dir("data", "history", name)

    @property
    def images_dir(self) -> Path:
        return self._dir("data", "images")

    @property
    def quarantine_dir(self) -> Path:
        return self._dir("quarantine")

    @property
    def embeddings_dir(self) -> Path:
        """Shards of the item_embeddings table written by the backfill."""
        return self._dir("embeddings")

    @property
    def thumbnails_dir(self) -> Path:
        return self._dir("thumbnails")

    @property
    def feast_dir(self) -> Path:
        return self._dir("feast")

    @property
    def feature_sources_dir(self) -> Path:
        return self._dir("feast", "sources")

    @property
    def mlflow_dir(self) -> Path:
        return self._dir("mlflow")

    @property
    def models_dir(self) -> Path:
        """Local cache of model files (the registry in MLflow is the source of truth)."""
        return self._dir("models")

    @property
    def reports_dir(self) -> Path:
        return self._dir("reports")

    @property
    def events_dir(self) -> Path:
        """Impressions and clicks recorded by the server."""
        return self._dir("events")

    @property
    def truth_dir(self) -> Path:
        """The simulator's ground truth (embedded world only)."""
        return self._dir("data", "truth")

    @property
    def demo_dir(self) -> Path:
        """Stamps of `recsys demo` stages (fingerprint of their last successful run)."""
        return self._dir("demo")
