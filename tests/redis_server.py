"""A real redis-server for the tests, started on a free port of 127.0.0.1 (the test is skipped where
redis-server is not installed): nothing written to disk, or with ``data_dir`` an append-only file there
fsync'd on every write, as the Redis event log requires."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, data_dir: Path | None = None, *options: str) -> subprocess.Popen:
    """A redis-server on ``port`` of 127.0.0.1, once it answers PING: with nothing written to disk, or
    with ``data_dir`` (its ``--dir``) running ``appendonly yes`` and ``appendfsync always``; ``options``
    are more of its command-line settings."""
    server_bin = shutil.which("redis-server")
    if server_bin is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it), "
                    "and Redis is tested against a real one only")
    # a server without a data_dir still gets a folder of its own: an option turning the AOF on would
    # otherwise write it into the working directory (the repository)
    storage = (["--appendonly", "no", "--dir", tempfile.mkdtemp(prefix="redis-")] if data_dir is None else
               ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(data_dir)])
    server = subprocess.Popen([server_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *storage,
                               *options],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe, deadline = redis.Redis(host="127.0.0.1", port=port), time.monotonic() + 10
    try:
        while True:
            try:
                probe.ping()
                return server
            except (redis.ConnectionError, redis.BusyLoadingError):
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"redis-server did not answer PING on port {port} within 10 s "
                                f"(exit code {server.poll()})")
                time.sleep(0.02)
    finally:
        probe.close()


def stop_redis(server: subprocess.Popen) -> None:
    """SIGKILL the server (a crash) and wait for it."""
    server.kill()
    server.wait()
