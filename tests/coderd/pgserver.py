"""A throwaway PostgreSQL server from Debian's packages, for tests.

Runs as the ``postgres`` user when the tests run as root, in a temp dir, on a
free loopback port, with its unix socket in that dir; stopped by the PID in
its ``postmaster.pid``.  Missing binaries FAIL (never skip) the tests that
need it: ``.ci/setup`` installs the ``postgresql`` package.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from tests.netutil import free_port

PG_BIN = "/usr/lib/postgresql/15/bin"


@dataclass
class PgServer:
    host: str
    port: int
    _counter: itertools.count[int]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def fresh_database(self) -> str:
        name = f"burrow_test_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def run_pg_server() -> Iterator[PgServer]:
    """Start PostgreSQL, yield it, stop it (a generator for a session fixture)."""
    initdb = os.path.join(PG_BIN, "initdb")
    if not os.path.exists(initdb):
        pytest.fail(
            f"PostgreSQL binaries not found in {PG_BIN}: install Debian's postgresql "
            "package (bash .ci/setup does)"
        )
    tmp = tempfile.mkdtemp(prefix="burrow-pg-")
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    data = os.path.join(tmp, "data")
    subprocess.run(
        _as_postgres([initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    log = open(os.path.join(tmp, "postgres.log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        _as_postgres(
            [
                os.path.join(PG_BIN, "postgres"),
                "-D", data, "-p", str(port), "-k", tmp,
                "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
            ]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = PgServer("127.0.0.1", port, itertools.count())
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(server.url(), connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    with open(os.path.join(tmp, "postgres.log"), errors="replace") as f:
                        pytest.fail(f"PostgreSQL did not start:\n{f.read()[-2000:]}")
                time.sleep(0.1)
        yield server
    finally:
        pid = None
        pidfile = os.path.join(data, "postmaster.pid")
        with contextlib.suppress(OSError, ValueError), open(pidfile) as f:
            pid = int(f.readline().strip())
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
