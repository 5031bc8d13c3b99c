"""A real ``burrow server`` with one running workspace, and an in-test agent (not a test module).

The workspace's template is real Terraform run by the server's built-in
provisioner: its only resource writes the agent token to a file, so the test
can play the agent -- join the coordinator with that token, connect to the
relay from the relay map, and serve ``ssh`` (the agent's SSHServer),
``tcp:<port>`` (the agent's ServiceRouter) and ``speedtest`` on a tunnel
endpoint -- until ``burrow agent`` exists to run as a process.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio_websocket

from agent.services import ServiceRouter
from agent.ssh_adapter import SSHServer
from burrow.access import speedtest
from derp.client import DerpClient
from derp.keys import generate_private_key
from peer.relaymap import RelayMap
from tests.burrow.server_proc import cli_env, wait_listening
from tunnel.derp_path import DerpPath
from tunnel.endpoint import Endpoint
from tunnel.stream import TunnelStream

TEMPLATE = """
variable "burrow_workspace_transition" {
  type    = string
  default = "start"
}
variable "burrow_agent_token" {
  type      = string
  default   = ""
  sensitive = true
}
variable "token_file" {
  type = string
}
resource "terraform_data" "agent" {
  count = var.burrow_workspace_transition == "start" ? 1 : 0
  provisioner "local-exec" {
    command     = "printf %s \\"$T\\" > \\"$F\\""
    environment = { T = var.burrow_agent_token, F = var.token_file }
  }
}
output "burrow_agents" {
  value = [{ name = "main", resource = "terraform_data.agent", os = "linux", directory = "/tmp" }]
}
"""


@dataclass
class World:
    proc: subprocess.Popen[str]
    url: str
    env: dict[str, str]
    tmp: Path
    token: str = ""
    logs: list[str] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "burrow.cli", *args], capture_output=True, text=True,
            timeout=timeout, check=False, env=self.env, stdin=subprocess.DEVNULL,
        )

    def restart_server(self) -> None:
        """Stop the server (SIGTERM) and start it again on the same address and data."""
        _stop(self.proc)
        again = _start_server(self.tmp, self.env, self.url.split("//", 1)[1])
        assert again.url == self.url
        self.proc = again.proc

    def ok(self, *args: str) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
        return proc.stdout


def _start_server(tmp: Path, env: dict[str, str], listen: str = "127.0.0.1:0") -> World:
    proc = subprocess.Popen(
        [sys.executable, "-m", "burrow.cli", "server", "--listen", listen,
         "--data-dir", str(tmp / "data"), "--provisioner-daemons", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    return World(proc, wait_listening(proc), env, tmp)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
        proc.communicate(timeout=10)


@contextlib.contextmanager
def running_world(tmp: Path, listen: str = "127.0.0.1:0") -> Iterator[World]:
    """Server + logged-in CLI + workspace ``dev`` whose build succeeded."""
    env = cli_env(tmp)
    (tmp / "home").mkdir(parents=True)
    world = _start_server(tmp, env, listen)
    try:
        world.ok("login", world.url, "--username", "admin", "--password", "password123")
        tpl = tmp / "tpl"
        tpl.mkdir()
        (tpl / "main.tf").write_text(TEMPLATE)
        world.ok("templates", "push", str(tpl), "--name", "t")
        token_file = tmp / "agent-token"
        world.ok("create", "dev", "--template", "t", "--var", f"token_file={token_file}")
        proc = world.cli("logs", "dev", "--follow", timeout=120)
        assert "start: succeeded" in proc.stderr, (proc.stdout[-3000:], proc.stderr[-3000:])
        world.token = token_file.read_text().strip()
        assert world.token
        yield world
    finally:
        _stop(world.proc)


@dataclass
class FakeAgent:
    endpoint: Endpoint
    router: ServiceRouter
    derp: DerpClient
    clients: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def in_test_agent(world: World, *, ssh_workdir: Path,
                        direct: bool = False) -> AsyncIterator[FakeAgent]:
    """Play the workspace agent: coordinator + relay + tunnel endpoint serving services."""
    ws_url = world.url.replace("http://", "ws://") + "/api/v2/workspaceagents/me/coordinate"
    headers = [(b"Burrow-Agent-Token", world.token.encode())]
    ssh = SSHServer(world.tmp / "host_key", shell="/bin/sh", workdir=ssh_workdir)
    router = ServiceRouter(ssh.serve_stream)
    key = generate_private_key()

    def allow(peer: bytes, service: str) -> bool | str:
        return True if service == "speedtest" else router.allow(peer, service)

    async def handle(peer: bytes, service: str, stream: TunnelStream) -> None:
        if service == "speedtest":
            await speedtest.serve(stream)
        else:
            await router.handle_tunnel_stream(peer, service, stream)

    async with trio.open_nursery() as nursery:
        with trio.fail_after(15):
            ws = await trio_websocket.connect_websocket_url(nursery, ws_url, extra_headers=headers)
            welcome = json.loads(await ws.get_message())
        assert welcome["type"] == "welcome", welcome
        region = RelayMap.parse(welcome["relay_map"]).regions[0]
        derp = DerpClient(region.url, key)
        with trio.fail_after(15):
            await nursery.start(derp.run)
        endpoint = Endpoint(key, relay=DerpPath(derp), allow=allow)
        await nursery.start(endpoint.run)
        node: dict[str, object] = {
            "key": endpoint.public_key.hex(), "home_region": region.region_id}
        if direct:
            host, port = await endpoint.listen_direct("127.0.0.1", 0)
            node["endpoints"] = [f"{host}:{port}"]
        agent = FakeAgent(endpoint, router, derp)

        async def coordinate() -> None:
            with contextlib.suppress(trio_websocket.ConnectionClosed):
                while True:
                    msg = json.loads(await ws.get_message())
                    if msg.get("type") == "peer":
                        peer = bytes.fromhex(msg["node"]["key"])
                        agent.clients.append(peer)
                        endpoint.set_peer(peer)

        await ws.send_message(json.dumps({"type": "node", "node": node}))
        nursery.start_soon(coordinate)
        nursery.start_soon(endpoint.serve, handle)
        try:
            yield agent
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await endpoint.aclose()
                await ws.aclose()
            nursery.cancel_scope.cancel()
