"""`recsys serve` as a real uvicorn process on 127.0.0.1 (random port), and the HTML page in
headless Chromium. One server for the module: starting one costs seconds of imports."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from serving_helpers import API_KEY, build_world, make_settings

from serving.events import read_events
from serving.process import SETTINGS_ENV, free_port, server_env, wait_until

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Served:
    url: str
    home: Path
    process: subprocess.Popen

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out = self.process.communicate(timeout=60)[0].decode()
        return self.process.returncode, out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`recsys serve` (the CLI command, in its own process) on a random port of 127.0.0.1."""
    ws = build_world(tmp_path_factory.mktemp("served") / "ws")
    port = free_port()
    script = textwrap.dedent(f"""
        import typer
        from recsys.cli import common, serve
        app = typer.Typer()
        app.callback()(common.main_options)
        serve.register(app, {{}})
        app(["--home", {str(ws.root)!r}, "serve", "--port", "{port}"])
    """)
    env = {**server_env(make_settings(ws.root)), "RECSYS_SERVING__EVENT_FLUSH_SECONDS": "30",
           "RECSYS_SERVING__API_KEY": API_KEY}
    env.pop(SETTINGS_ENV)
    p = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}", ws.root, p)
    try:
        wait_until(served.url + "/healthz", 120, p)
        wait_until(served.url + "/v1/users/u1/recommendations", 120, p)  # state loaded
        yield served
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def _chromium(*args: str, profile: Path) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={profile}", "--force-device-scale-factor=1", "--window-size=1200,1000",
           "--virtual-time-budget=10000", *args]
    done = subprocess.run(cmd, capture_output=True, timeout=120, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian `chromium` is not installed (apt-get install chromium)")
def test_user_page_renders_images_in_headless_chromium(server: Served, tmp_path: Path) -> None:
    url = f"{server.url}/ui/users/u1?k=8"
    dom = _chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    total = int(re.search(r'data-images="(\d+)"', dom).group(1))
    rendered = int(re.search(r'data-images-rendered="(\d+)"', dom).group(1))
    assert total > 0 and rendered == total, f"{rendered} of {total} images rendered"
    assert "generated" in dom and "Recent clicks" in dom
    rects = json.loads(re.search(r"data-image-rects=\"([^\"]*)\"", dom).group(1).replace("&quot;", '"'))
    shot = tmp_path / "page.png"
    _chromium(f"--screenshot={shot}", url, profile=tmp_path / "profile-shot")
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    visible = [(x, y, w, h) for x, y, w, h in rects if y + h <= pixels.shape[0] and x + w <= pixels.shape[1]]
    assert visible, "no image inside the screenshot"
    for x, y, w, h in visible:  # each test image is a coloured square in a differently coloured frame
        region = pixels[y:y + h, x:x + w]
        assert region.std() > 5, f"image region {(x, y, w, h)} is flat: not rendered"


def test_item_images_only_for_items_in_the_table(server: Served) -> None:
    r = httpx.get(server.url + "/ui/images/i000")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert httpx.get(server.url + "/ui/images/i002").status_code == 404  # item without an image
    assert httpx.get(server.url + "/ui/images/nope").status_code == 404
    assert httpx.get(server.url + "/ui/images/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)


def test_real_process_serves_and_flushes_events_on_sigterm(server: Served) -> None:
    """Runs last: it stops the module's server."""
    assert httpx.get(server.url + "/healthz").status_code == 200
    ready = httpx.get(server.url + "/readyz")  # no trained models in this workspace
    assert ready.status_code == 503 and any("models" in r for r in ready.json()["reasons"])
    body = httpx.get(server.url + "/v1/users/u1/recommendations", params={"k": 5}).json()
    assert len(body["items"]) == 5 and body["degraded"] is True and body["fallback"] == "popular"
    events = [{"request_id": body["request_id"], "user_id": "u1", "item_id": it["item_id"],
               "position": it["rank"] - 1, "clicked": it["rank"] == 1, "propensity": it["propensity"],
               "policy": body["policy"]} for it in body["items"]]
    answers = [httpx.post(server.url + "/v1/events", json={"events": events}) for _ in range(3)]
    assert [r.status_code for r in answers] == [202] * 3
    assert [r.json() for r in answers] == [{"accepted": 5}] + [{"accepted": 0, "duplicates": 5}] * 2
    code, out = server.stop()
    assert code in (0, -15), out[-2000:]  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert f"{server.url}/docs" in out  # `recsys serve` printed where to look
    # the 30 s flush never came: SIGTERM wrote them, each (request_id, position) once
    assert read_events(server.home / "events").height == 5
