"""/api/v2/buildinfo: public, the installed version, and nothing more (no Python version)."""

from __future__ import annotations

from sdk.version import VERSION
from tests.coderd.apihelp import Api


async def test_buildinfo_is_the_version_only(api: Api) -> None:
    r = await api.call("GET", "/buildinfo", token=None)
    assert r.status == 200
    assert r.body == {"version": VERSION}
    assert VERSION[0].isdigit()
