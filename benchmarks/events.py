"""Event ingest: POST /v1/events on one uvicorn worker with the write-ahead log (fsync before 202,
group commit) against the paths without it, in the same run.

    OMP_WAIT_POLICY=passive .venv/bin/python benchmarks/events.py --seconds 5 --connections 32 --batch 1,10

Durabilities: `fsync` (the default: the log is written and fsynced before the answer), `write`
(written, not fsynced: survives kill -9, not a power cut) and `memory` (the former path: nothing
on disk until the parquet flush, once a second). Each runs its own server process (one worker,
`serving.app:app_from_env`) on 127.0.0.1 over an empty workspace (no models: the events endpoint
needs none). The client is a closed loop of raw keep-alive HTTP/1.1 connections (asyncio streams,
one coroutine per connection, each sending its next request when the last answered), every event
with its own (request_id, position), so none is dropped as a duplicate. After each run the server
is stopped gracefully and the events folder is read back: every acknowledged event must be there.
Figures: events/s and requests/s (wall clock, client and server sharing the machine's cores), p50
and p99 latency, and the server's CPU time per 1,000 events (which does not depend on how busy
the shared cores are).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
os.environ.setdefault("RECSYS_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODES = ("fsync", "write", "memory")


def request_bytes(host: str, conn: str, n: int, batch: int) -> bytes:
    """One POST /v1/events with `batch` events whose keys no other request uses."""
    events = [{"request_id": f"{conn}-{n}", "user_id": f"u{n % 1000}",
               "item_id": f"i{(n * 13 + k) % 5000}", "position": k, "clicked": k == 0, "propensity": 0.5,
               "policy": "bench"} for k in range(batch)]
    body = json.dumps({"events": events}, separators=(",", ":")).encode()
    head = (f"POST /v1/events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def load(host: str, port: int, connections: int, seconds: float, batch: int,
               tag: str = "c") -> dict[str, float]:
    """Closed loop over `connections` keep-alive connections for `seconds`."""
    latencies: list[float] = []
    errors = {"non_202": 0, "socket": 0}
    accepted = [0]
    stop = time.perf_counter() + seconds

    async def client(conn: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        n = 0
        try:
            while time.perf_counter() < stop:
                data = request_bytes(f"{host}:{port}", f"{tag}{conn}", n, batch)
                n += 1
                t = time.perf_counter()
                writer.write(data)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
                if head.split(b" ", 2)[1] != b"202":
                    errors["non_202"] += 1
                else:
                    accepted[0] += json.loads(body)["accepted"]
        except (OSError, asyncio.IncompleteReadError):
            errors["socket"] += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(connections)))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    return {"events_s": accepted[0] / wall, "rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "requests": len(lat), "accepted": accepted[0], **errors}


def wait_loaded(url: str, timeout: float = 120.0) -> None:
    """Until the server has tried to load its models (it has none here, so /readyz stays 503):
    the loading thread (imports of MLflow, Feast) would otherwise be measured with the events."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "loading" not in httpx.get(url + "/readyz", timeout=10).json()["reasons"]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{url} still loading after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def run_mode(mode: str, root: Path, connections: int, seconds: float, batch: int) -> dict[str, float]:
    from recsys.config import load_settings
    from serving.events import read_events
    from serving.process import start_server

    home = root / f"{mode}-b{batch}"
    settings = load_settings(home=str(home), **{"serving.event_durability": mode})
    server = start_server(settings, wait=120)
    try:
        wait_loaded(server.url)
        port = int(server.url.rsplit(":", 1)[1])
        warm = asyncio.run(load("127.0.0.1", port, min(4, connections), 0.5, batch, tag="w"))["accepted"]
        before = cpu_seconds(server.process.pid)
        result = asyncio.run(load("127.0.0.1", port, connections, seconds, batch))
        cpu = cpu_seconds(server.process.pid) - before
    finally:
        code = server.stop(60)
    stored = read_events(home / "events").height
    acknowledged = warm + result["accepted"]
    assert stored == acknowledged, f"{mode}: {acknowledged} events acknowledged, {stored} stored"
    return {**result, "cpu_ms_per_1k": 1e6 * cpu / max(result["accepted"], 1), "exit": code}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--batch", default="1,10", help="events per request, comma-separated")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--home", type=Path, default=None, help="folder for the workspaces (default: a temp one)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    modes = [m for m in args.modes.split(",") if m]
    with tempfile.TemporaryDirectory(prefix="recsys-events-") as tmp:
        root = args.home or Path(tmp)
        print(f"one worker, {args.connections} connections, {args.seconds:.0f} s per run, "
              f"{os.cpu_count()} cores shared by client and server", flush=True)
        print(f"{'durability':<10} {'batch':>5} {'events/s':>10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'CPU ms/1k ev':>12} {'errors':>6}", flush=True)
        for batch in (int(b) for b in args.batch.split(",")):
            results = {}
            for mode in modes:
                r = run_mode(mode, root, args.connections, args.seconds, batch)
                results[mode] = r
                errors = r["non_202"] + r["socket"]
                print(f"{mode:<10} {batch:>5} {r['events_s']:>10.0f} {r['rps']:>8.0f} {r['p50']:>7.1f} "
                      f"{r['p99']:>7.1f} {r['cpu_ms_per_1k']:>12.1f} {errors:>6}", flush=True)
            if "fsync" in results:
                for other in (m for m in modes if m != "fsync"):
                    print(f"  batch {batch}: fsync / {other} = "
                          f"{results['fsync']['events_s'] / results[other]['events_s']:.2f} (events/s), "
                          f"{results['fsync']['cpu_ms_per_1k'] / results[other]['cpu_ms_per_1k']:.2f} "
                          "(server CPU per event)", flush=True)


if __name__ == "__main__":
    main()
