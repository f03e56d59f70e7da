"""The Ray session a job runs in, and how many actors it gets.

`ray_session(cfg)` connects to `ray.address` (or `$RAY_ADDRESS`) when one is given; otherwise it
starts a local instance with `num_cpus` CPUs and an `object_store_mb` object store (Ray's
defaults take every core and a third of the memory), without the dashboard, listening on
127.0.0.1 only, and stops it when the job ends. A session that is already open (a test fixture,
a notebook) is used as it is and left open. Without `-v` (the root logger above INFO) Ray's logs
and workers' output stay off the console.

Why `loopback_node`: Ray binds its servers to every interface unless the node's IP is the
loopback address, and turns 127.0.0.1 into the machine's address unless clusters are off
(`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, its macOS default); a local instance starts with that
switch off, restored afterwards.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

from recsys.distributed.config import RayConfig

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
RAY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune")


def cluster_address(cfg: RayConfig) -> str:
    """The cluster to connect to ('' starts a local instance): `cfg.address`, else `$RAY_ADDRESS`."""
    return cfg.address or os.environ.get("RAY_ADDRESS", "")


def _on_loopback(address: str) -> bool:
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    return host in (LOOPBACK, "localhost", "::1")


def _verbose() -> bool:
    return logging.getLogger().getEffectiveLevel() <= logging.INFO


def quiet_ray(verbose: bool) -> None:
    """Ray's loggers at WARNING with `verbose`, else ERROR; Ray Data's progress bars only with it,
    where Ray Data is in use (our jobs do not use it, and importing it costs the driver ~1 s)."""
    for name in RAY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.ERROR)
    if "ray.data" in sys.modules:
        context = sys.modules["ray.data"].DataContext.get_current()
        context.enable_progress_bars = verbose
        context.print_on_execution_start = verbose


@contextmanager
def loopback_node() -> Iterator[None]:
    """Ray nodes started inside this block (here or by `ray start` children) take 127.0.0.1 as
    their IP and listen on it alone."""
    from ray._private import ray_constants

    before_env, before_flag = os.environ.get(CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[CLUSTER_SWITCH] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: ray may have been imported already
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(CLUSTER_SWITCH, None)
        else:
            os.environ[CLUSTER_SWITCH] = before_env


@contextmanager
def ray_session(cfg: RayConfig) -> Iterator[str]:
    """Open (or reuse) a Ray session for one job; yields where it runs ('local' or the address)."""
    import ray

    verbose = _verbose()
    if ray.is_initialized():
        quiet_ray(verbose)
        yield "existing"
        return
    address = cluster_address(cfg)
    common = {"logging_level": logging.WARNING if verbose else logging.ERROR, "log_to_driver": verbose}
    with ExitStack() as stack:
        if address:
            if _on_loopback(address):  # a cluster on this machine's 127.0.0.1: the driver joins there
                stack.enter_context(loopback_node())
            ray.init(address=address, **common)
        else:
            stack.enter_context(loopback_node())
            ray.init(address="local", num_cpus=cfg.num_cpus, object_store_memory=cfg.object_store_mb << 20,
                     include_dashboard=False, _node_ip_address=LOOPBACK, **common)
        stack.callback(ray.shutdown)
        if not address and ray.util.get_node_ip_address() != LOOPBACK:
            raise RuntimeError(f"the local Ray instance took IP {ray.util.get_node_ip_address()}, not "
                               f"{LOOPBACK}: it would listen beyond this machine; stopped it")
        quiet_ray(verbose)
        where = address or "local"
        log.debug("ray session: %s, resources %s", where, ray.cluster_resources())
        yield where


def worker_count(cfg: RayConfig) -> int:
    """Actors per job: `cfg.workers`, or one per CPU of the session's cluster."""
    import ray

    if cfg.workers:
        return cfg.workers
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def start_head(env: Mapping[str, str], object_store_mb: int, output: IO[bytes] | int = subprocess.DEVNULL,
               timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`ray start --head --block --num-cpus 2` on 127.0.0.1 (no dashboard) in its own process
    group, as tests and benchmarks run a cluster for the jobs to join; returns the process and
    the cluster address once its GCS port answers. Raises RuntimeError if it exits or times out."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray_cli is None:
        raise FileNotFoundError("the ray CLI is not installed beside this Python")
    if env.get("RAY_AUTH_MODE") == "token":
        # local instances create their token themselves, `ray start` does not: on a machine
        # without ~/.ray/auth_token it exits; the token goes to that file, never to the console
        made = subprocess.run([ray_cli, "get-auth-token", "--generate"], env=dict(env),
                              stdout=subprocess.DEVNULL, stderr=output, check=False)
        if made.returncode:
            raise RuntimeError("ray get-auth-token --generate failed")
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", "--num-cpus", "2", "--port", str(port), "--node-ip-address",
         LOOPBACK, "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory",
         str(object_store_mb << 20)], env=dict(env), stdout=output, stderr=subprocess.STDOUT,
        start_new_session=True)  # its own process group: the cluster's processes, and only them
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return proc, f"{LOOPBACK}:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop_head(proc)
                raise RuntimeError("ray start failed") from None
            time.sleep(0.2)


def stop_head(proc: subprocess.Popen) -> None:
    """Stop a `start_head` cluster: SIGTERM to its process group (the raylet and GCS stop at
    once; a graceful `ray stop` drains for up to 30 s), SIGKILL after 3 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
