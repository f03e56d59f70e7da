"""Run the server as its own process on 127.0.0.1 (tests, benchmarks, `recsys demo`), and the
multi-worker supervisor behind `recsys serve --workers N`.

Several workers: N uvicorn processes, each binding its own `SO_REUSEPORT` socket on the same
host:port, so the kernel spreads new connections over them (Linux). uvicorn's own `--workers`
shares one listening socket, and one worker took nearly all keep-alive connections (5.6 s vs 0.4 s
of CPU under 32 connections; see benchmarks/README.md, serving).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from recsys.config import Settings

SETTINGS_ENV = "RECSYS_SERVE_SETTINGS_JSON"  # effective settings handed to uvicorn's workers
APP = "serving.app:app_from_env"  # the uvicorn factory each worker runs (a benchmark passes its own)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(settings: Settings) -> dict[str, str]:
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


def start_server(settings: Settings, port: int | None = None, workers: int = 1, log_path: Path | None = None,
                 wait: float = 120.0, ready: bool = False, app: str = APP) -> ServerProcess:
    """Start uvicorn on 127.0.0.1 in the background; returns once /healthz (or /readyz) answers.
    `app`: the factory ("module:function") that builds the app from `SETTINGS_ENV`."""
    port = port or free_port()
    if workers > 1:  # the supervisor of `recsys serve --workers N`
        cmd = [sys.executable, "-m", "serving.process", "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", "--app", app]
    else:
        cmd = [sys.executable, "-m", "uvicorn", app, "--factory", "--host",
               "127.0.0.1", "--port", str(port), "--log-level", "warning",
               "--timeout-graceful-shutdown", "20"]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (owned by the child)
    proc = subprocess.Popen(cmd, env=server_env(settings), stdout=out, stderr=subprocess.STDOUT)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until(server.url + ("/readyz" if ready else "/healthz"), wait, proc, workers)
    except Exception:
        server.stop(5)
        raise
    return server


def wait_until(url: str, timeout: float, process: subprocess.Popen | None = None, workers: int = 1) -> None:
    """Poll `url` until it answers 200 (from `workers` distinct processes: the pid in the body of
    /healthz and /readyz; each poll is a new connection, which the kernel hands to any worker)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    answered: set[int] = set()
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before {url} answered")
        try:
            r = httpx.get(url, timeout=2.0)
            if r.status_code == 200:
                if workers <= 1:
                    return
                answered.add(r.json()["pid"])
                if len(answered) >= workers:
                    return
                last = f"{len(answered)} of {workers} workers answered"
                continue
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s (last: {last})")


# ------------------------------------------------------------------------ several workers
GRACEFUL_SECONDS = 20


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes may also bind on host:port (SO_REUSEPORT)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("several workers need SO_REUSEPORT (Linux); use workers=1")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run_worker(host: str, port: int, log_level: str = "info", app: str = APP) -> None:
    """One worker: uvicorn on its own SO_REUSEPORT socket; the settings come from SETTINGS_ENV."""
    import uvicorn

    sock = reuseport_socket(host, port)
    config = uvicorn.Config(app, factory=True, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS)
    uvicorn.Server(config).run(sockets=[sock])


def supervise(host: str, port: int, workers: int, log_level: str = "info", app: str = APP) -> int:
    """Run `workers` worker processes on host:port until SIGTERM/SIGINT, which is forwarded to each
    as SIGTERM (graceful: in-flight requests finish, queued events are written). A worker that
    exits on its own is reported on stderr; the others keep serving. Returns 0 if every worker
    ended cleanly, else 1."""
    cmd = [sys.executable, "-m", "serving.process", "--worker", "--host", host, "--port", str(port),
           "--log-level", log_level, "--app", app]
    # own process group: a Ctrl-C in the terminal reaches the workers once, through the parent
    procs = [subprocess.Popen(cmd, process_group=0) for _ in range(workers)]
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        running = list(procs)
        while running:
            for p in list(running):
                code = p.poll()
                if code is None:
                    continue
                running.remove(p)
                clean = code == 0 or (stopping and code in (-signal.SIGTERM, 128 + signal.SIGTERM))
                if not clean or not stopping:
                    failed = True
                    print(f"serving: worker pid {p.pid} exited with code {code}"
                          f"{'' if stopping else f'; {len(running)} of {workers} still serving'}",
                          file=sys.stderr, flush=True)
            time.sleep(0.2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs:  # only if the supervisor itself failed: don't leave orphans
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(GRACEFUL_SECONDS + 10)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="recsys serving workers on one SO_REUSEPORT port")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--worker", action="store_true", help="run one worker (used by the supervisor)")
    ap.add_argument("--app", default=APP, help="the app factory each worker runs (module:function)")
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args.host, args.port, args.log_level, args.app)
        return 0
    return supervise(args.host, args.port, args.workers, args.log_level, args.app)


if __name__ == "__main__":
    sys.exit(main())
