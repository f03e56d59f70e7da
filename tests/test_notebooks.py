"""The notebooks run top to bottom against a workspace the demo pipeline filled."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.integration
@pytest.mark.parametrize("name", ["quickstart.ipynb", "offline_ab.ipynb"])
def test_notebook_runs(name: str, demo_env: Path, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "outputs in git"
    env_home = os.environ["RECSYS_HOME"]
    assert Path(env_home) == demo_env
    resources = {"metadata": {"path": str(tmp_path)}}
    NotebookClient(nb, timeout=600, kernel_name="python3", resources=resources).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
