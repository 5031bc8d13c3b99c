"""Fixtures for coderd: a real PostgreSQL for the session, and a store per backend.

The PostgreSQL server comes from Debian's packages (``.ci/setup`` installs
``postgresql``).  It runs as the ``postgres`` user when the tests run as
root, in a temp dir, on a free loopback port, with its unix socket in that
dir, and is stopped by the PID in its ``postmaster.pid`` at the end.  Each
test gets a fresh database.  Missing binaries FAIL the tests that need them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from coderd.store.factory import Opened, open_store
from tests.coderd.apihelp import Api
from tests.coderd.pgserver import PgServer, run_pg_server


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    yield from run_pg_server()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_config(backend: str, request: pytest.FixtureRequest, tmp_path: object) -> dict[str, str]:
    """Keyword arguments for ``open_store`` (and the server) for this backend."""
    if backend == "postgres":
        server: PgServer = request.getfixturevalue("pg_server")
        return {"postgres_url": server.fresh_database()}
    return {"data_dir": str(tmp_path)}


@pytest.fixture
async def opened(db_config: dict[str, str]) -> AsyncIterator[Opened]:
    o = await open_store(**db_config)
    try:
        yield o
    finally:
        await o.aclose()


@pytest.fixture
async def api(opened: Opened) -> Api:
    from coderd.deps import Coderd, use

    cd = Coderd(opened.store, opened.pubsub, "http://127.0.0.1:3000")
    use(cd)
    return Api(cd)
