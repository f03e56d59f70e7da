"""Run the server as its own process on 127.0.0.1 (tests, benchmarks, `recsys demo`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SETTINGS_ENV = "RECSYS_SERVE_SETTINGS_JSON"  # effective settings handed to uvicorn's workers


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings: Any) -> dict[str, str]:
    """Environment for a server process serving exactly `settings` (home made absolute)."""
    settings = settings.model_copy(update={"home": Path(settings.home).resolve()})
    return {**os.environ, SETTINGS_ENV: settings.model_dump_json(),
            "OMP_WAIT_POLICY": "passive", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path | None

    def stop(self, timeout: float = 30.0) -> int:
        """Graceful shutdown (SIGTERM: queued events are written), then kill if it hangs."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(settings: Any, port: int | None = None, workers: int = 1, log_path: Path | None = None,
                 wait: float = 120.0, ready: bool = False) -> ServerProcess:
    """Start uvicorn on 127.0.0.1 in the background; returns once /healthz (or /readyz) answers."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "uvicorn", "serving.app:app_from_env", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers), "--log-level", "warning",
           "--timeout-graceful-shutdown", "20"]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (owned by the child)
    proc = subprocess.Popen(cmd, env=server_env(settings), stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until(server.url + ("/readyz" if ready else "/healthz"), wait, proc)
    except Exception:
        server.stop(5)
        raise
    return server


def wait_until(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Poll `url` until it answers 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})")
