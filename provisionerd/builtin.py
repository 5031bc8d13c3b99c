"""Built-in provisioner daemons: N daemons inside ``burrow server``.

They connect back to the server's own URL over the same WebSocket endpoint
and code path as external daemons (``burrow provisionerd start``), with the
internal pre-shared key the server generated.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

import trio

from provisionerd.client import connector
from provisionerd.daemon import ProvisionerDaemon
from provisionerd.terraform import Mirror


async def run_builtin_daemons(
    url: str,
    *,
    psk: str,
    count: int,
    workdir_root: Path,
    tags: Mapping[str, str] | None = None,
    terraform: str = "terraform",
    mirror: Mirror | None = None,
    heartbeat_interval: float = 3.0,
    variables: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[list[ProvisionerDaemon]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``count`` daemons until cancelled.

    ``task_status.started`` gets the daemon objects once every one of them
    has been welcomed by coderd (so a server can report them ready).
    ``variables`` are template variable defaults for every job (e.g.
    ``{"data_dir": ...}`` for ``templates/local``; ``burrow_binary`` defaults
    to the ``burrow`` beside the running Python).  ``ssl_context`` verifies
    an https ``url`` (the server passes one that trusts its own certificate).

    Raises:
        Unauthorized: coderd refused ``psk`` (a wiring bug in the server).
        ValueError: bad ``url``.
    """
    await trio.to_thread.run_sync(lambda: workdir_root.mkdir(parents=True, exist_ok=True))
    async with (
        connector(url, psk=psk, ssl_context=ssl_context) as connect,
        trio.open_nursery() as nursery,
    ):
        daemons = [
            ProvisionerDaemon(
                connect,
                name=f"built-in-{i}",
                tags=tags or {},
                workdir_root=workdir_root,
                terraform=terraform,
                mirror=mirror,
                heartbeat_interval=heartbeat_interval,
                variables=variables,
            )
            for i in range(count)
        ]
        for d in daemons:
            await nursery.start(d.run)
        task_status.started(daemons)
