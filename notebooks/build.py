"""Writes the notebooks from the cells below (outputs stripped), so they diff as plain Python.

Run `python notebooks/build.py` after editing a cell; the tests execute the .ipynb files.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    new_markdown_cell(
        "# recsys quickstart\n\nLoad a workspace that `make demo` (or `recsys demo --no-serve`) filled, "
        "look at the items and the generated thumbnails, query the HTTP API, and read the MLflow runs. "
        "The workspace and settings come from `recsys.toml` / `RECSYS_*` as everywhere else."
    ),
    new_code_cell(
        "from recsys.config import load_settings\n"
        "from recsys.data.tables import load_table\n"
        "from recsys.workspace import Workspace\n\n"
        "settings = load_settings()\n"
        "ws = Workspace.at(settings.home)\n"
        "items = load_table(ws, 'items')\n"
        "print(ws.root, items.shape)\n"
        "items.head()"
    ),
    new_markdown_cell(
        "## Where item images come from\n\n"
        "`generated` images were drawn by the diffusion model for items that had none."
    ),
    new_code_cell("items.group_by('image_source').len().sort('image_source')"),
    new_code_cell(
        "import polars as pl\n"
        "from IPython.display import display\n"
        "from PIL import Image\n\n"
        "generated = items.filter(pl.col('image_source') == 'generated').head(4)\n"
        "assert generated.height > 0, 'no generated thumbnails in this workspace'\n"
        "for row in generated.iter_rows(named=True):\n"
        "    print(row['item_id'], '|', row['description'][:100])\n"
        "    display(Image.open(row['image_uri']))\n"
        "pl.read_parquet(ws.thumbnails_dir / 'provenance.parquet').head()"
    ),
    new_markdown_cell(
        "## Query the API\n\nStart the server on 127.0.0.1 (as `recsys serve` does) and ask for "
        "recommendations."
    ),
    new_code_cell(
        "import httpx\n\n"
        "from serving.process import start_server\n\n"
        "server = start_server(settings, ready=True)\n"
        "user = load_table(ws, 'impressions', columns=['user_id'])['user_id'][0]\n"
        "try:\n"
        "    url = f'{server.url}/v1/users/{user}/recommendations'\n"
        "    response = httpx.get(url, params={'k': 5}, timeout=30)\n"
        "    response.raise_for_status()\n"
        "    body = response.json()\n"
        "finally:\n"
        "    server.stop()\n"
        "titles = items.select('item_id', 'title', 'image_source')\n"
        "recs = pl.DataFrame(body['items']).join(titles, on='item_id')\n"
        "assert recs.height == 5\n"
        "recs"
    ),
    new_markdown_cell("## MLflow: one run per pipeline step, with lineage"),
    new_code_cell(
        "import mlflow\n\n"
        "from recsys import tracking\n\n"
        "tracking.setup_tracking(settings)\n"
        "runs = mlflow.search_runs(search_all_experiments=True)\n"
        "print(sorted(runs['tags.recsys.pipeline'].dropna().unique()))\n"
        "runs[['tags.recsys.pipeline', 'start_time', 'status']].head(10)"
    ),
    new_code_cell("pl.DataFrame(tracking.list_models(settings)).select('name', 'version', 'aliases')"),
]

OFFLINE_AB = [
    new_markdown_cell(
        "# Offline A/B: may the trained ranker replace popularity?\n\n"
        "`evaluate_ab` compares two policies on the held-out window of the click log: ranking metrics "
        "with paired-bootstrap intervals, off-policy estimates of CTR where the log has propensities, "
        "and, on the embedded world, the true online CTR from the simulator. It is what "
        "`recsys evaluate ab --control popular --treatment models:/ranker@champion` runs."
    ),
    new_code_cell(
        "from recsys.config import load_settings\n"
        "from training.evaluate import evaluate_ab\n\n"
        "settings = load_settings()\n"
        "run = evaluate_ab(settings, control='popular', treatment='models:/ranker@champion', track=False)\n"
        "print(run.result.verdict.line())"
    ),
    new_markdown_cell("## Ranking metrics: treatment minus control, with 95% intervals"),
    new_code_cell(
        "import polars as pl\n\n"
        "rows = [\n"
        "    {'segment': seg, 'metric': d.metric, 'control': d.control, 'treatment': d.treatment,\n"
        "     'delta': d.delta, 'low': d.low, 'high': d.high, 'p': d.p_value}\n"
        "    for seg, deltas in run.result.ranking.items() for d in deltas\n"
        "]\n"
        "table = pl.DataFrame(rows)\n"
        "assert table.height > 0\n"
        "table.filter(pl.col('segment') == 'all')"
    ),
    new_markdown_cell("## Off-policy estimates against the simulator's truth"),
    new_code_cell(
        "print(run.result.ope_note or '')\n"
        "for estimate in run.result.offline or []:\n"
        "    print(estimate)\n"
        "run.result.truth_ctr"
    ),
    new_markdown_cell("## The report\n\nMarkdown and a self-contained HTML file (open it in a browser)."),
    new_code_cell(
        "from IPython.display import Markdown\n\n"
        "print(run.paths)\n"
        "Markdown(run.paths['markdown'].read_text())"
    ),
]


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("quickstart.ipynb", QUICKSTART)
    write("offline_ab.ipynb", OFFLINE_AB)
