"""`start_head` on a machine that has never run Ray: in token mode `ray start` needs a token
that only local instances create by themselves."""

from __future__ import annotations

import os
import socket

import pytest

from recsys.distributed.cluster import LOOPBACK, start_head, stop_head

pytestmark = pytest.mark.integration


def test_a_cluster_starts_in_token_mode_without_a_token_and_keeps_it_off_the_console(tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_TOKEN")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token")
    log = tmp_path / "ray-start.log"
    with log.open("wb") as out:
        proc, address = start_head(env, 128, output=out)
    try:
        host, port = address.split(":")
        assert host == LOOPBACK
        socket.create_connection((host, int(port)), timeout=5).close()
        token = (home / ".ray" / "auth_token").read_text().strip()
        assert token
        assert token not in log.read_text()
    finally:
        stop_head(proc)
