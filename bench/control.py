"""``python -m bench control``: the control plane's latencies, beside Terraform alone.

One run, per store backend (SQLite, PostgreSQL or both), against a real
``burrow server`` process on loopback:

* API latency p50/p99 and req/s for ``GET /api/v2/workspaces`` (session
  token) and ``GET /api/v2/workspaceagents/me/manifest`` (agent token) under
  ``--clients`` concurrent keep-alive connections for ``--seconds`` each;
* job dispatch latency: a build's ``created_at`` to its job's ``started_at``
  (queued -> acquired by a built-in provisioner daemon), from the API's
  timestamps;
* create -> build succeeded for ``templates/local`` (server side: build
  created -> job completed; client side: POST to the first poll that sees
  ``succeeded``), beside ``terraform init`` + ``terraform apply`` of the same
  template alone, run in the same process tree in the same run: the baseline
  the ratio is taken against.

The template's agent command (``burrow_binary``) is a dummy shell script that
only writes the agent token it is given to a file, so no agent process runs
and the token serves the manifest measurement.

PostgreSQL is a throwaway server from Debian's packages (initdb into a temp
dir, a free port, stopped by its PID), as ``tests/coderd/pgserver.py`` does.
The load generator is one trio process with hand-rolled HTTP/1.1 keep-alive
clients (content-length bodies only), so its own cost per request is small
next to the server's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bench.netutil import free_port
from burrow.up import default_template_dir

TEMPLATE_DIR = default_template_dir()  # shipped in the package: works from a wheel too
PG_BIN = "/usr/lib/postgresql/15/bin"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.IGNORECASE)

DUMMY_AGENT = """#!/bin/sh
# Dummy agent for bench control: records the agent token it is given
# (BURROW_AGENT_TOKEN in its environment, `--token T` or `--token-file F`), then exits.
token="${BURROW_AGENT_TOKEN:-}"
while [ $# -gt 0 ]; do
  if [ "$1" = "--token" ]; then token="$2"; fi
  if [ "$1" = "--token-file" ]; then token=$(cat "$2"); fi
  shift
done
dir=$(dirname "$0")
printf %s "$token" > "$dir/agent-token.$$" && mv "$dir/agent-token.$$" "$dir/agent-token"
"""


class BenchError(Exception):
    """A benchmark step failed (a process did not start, a build failed)."""


def _percentiles(samples: list[float]) -> tuple[float, float]:
    s = sorted(samples)
    if not s:
        return 0.0, 0.0
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))]


# ---------------------------------------------------------------- PostgreSQL


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server; yields its ``postgres`` database URL.

    Raises:
        BenchError: the binaries are missing or the server did not start.
    """
    import psycopg

    initdb = os.path.join(PG_BIN, "initdb")
    if not os.path.exists(initdb):
        raise BenchError(f"PostgreSQL binaries not found in {PG_BIN} (Debian's postgresql)")
    tmp = tempfile.mkdtemp(prefix="burrow-bench-pg-")
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
    data = os.path.join(tmp, "data")
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            _as_postgres([initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"]),
            check=True, capture_output=True, timeout=120,
        )
        port = free_port()
        proc = subprocess.Popen(
            _as_postgres([
                os.path.join(PG_BIN, "postgres"), "-D", data, "-p", str(port), "-k", tmp,
                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200",
            ]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(url, connect_timeout=2):
                    break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("PostgreSQL did not start") from None
                time.sleep(0.1)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute('CREATE DATABASE "burrow_bench" TEMPLATE template0')
        yield f"postgresql://postgres@127.0.0.1:{port}/burrow_bench"
    finally:
        pid = None
        with contextlib.suppress(OSError, ValueError), open(
            os.path.join(data, "postmaster.pid")
        ) as f:
            pid = int(f.readline().strip())
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)
        if proc is not None:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- burrow server


@contextlib.contextmanager
def burrow_server(data_dir: Path, postgres_url: str | None, daemons: int,
                  extra: Sequence[str] = ()) -> Iterator[str]:
    """A ``burrow server`` subprocess; yields its URL, stops it by its PID.

    ``extra`` flags go after the others (a later ``--listen`` wins).

    Raises:
        BenchError: it did not print its listening address within 30 s.
    """
    cmd = [sys.executable, "-m", "burrow.cli", "server", "--listen", "127.0.0.1:0",
           "--data-dir", str(data_dir), "--provisioner-daemons", str(daemons)]
    if postgres_url:
        cmd += ["--postgres-url", postgres_url]
    cmd += list(extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BURROW_")}
    log = open(data_dir.parent / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        assert proc.stdout is not None
        url = ""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + 30
            while not url and time.monotonic() < deadline:
                if not sel.select(timeout=deadline - time.monotonic()):
                    break
                line = proc.stdout.readline()
                if not line:
                    break
                if "listening on " in line:
                    url = line.strip().rsplit(" ", 1)[1]
        if not url:
            log.flush()
            tail = (data_dir.parent / "server.log").read_text(errors="replace")[-1500:]
            raise BenchError(f"burrow server did not start: {tail}")
        # Keep draining its stdout so it never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()


# ---------------------------------------------------------------- load generator


@dataclass
class Load:
    p50_ms: float
    p99_ms: float
    req_s: float
    requests: int
    errors: int


async def _one_client(
    host: str, port: int, request: bytes, end: float, samples: list[float], errors: list[int]
) -> None:
    stream = await trio.open_tcp_stream(host, port)
    buf = bytearray()
    async with stream:
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            await stream.send_all(request)
            while (i := buf.find(b"\r\n\r\n")) < 0:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise BenchError("server closed a keep-alive connection")
                buf += chunk
            head = bytes(buf[: i + 2])
            del buf[: i + 4]
            match = _CONTENT_LENGTH.search(head)
            if match is None:
                raise BenchError(f"response without content-length: {head[:200]!r}")
            size = int(match.group(1))
            while len(buf) < size:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    raise BenchError("server closed mid-response")
                buf += chunk
            del buf[:size]
            samples.append((time.perf_counter() - t0) * 1e3)
            if head[9:12] != b"200":
                errors.append(int(head[9:12]))


async def load(url: str, path: str, header: tuple[str, str], clients: int,
               seconds: float) -> Load:
    """``clients`` keep-alive connections sending ``GET path`` for ``seconds``."""
    hostport = url.split("//", 1)[1].rstrip("/")
    host, port = hostport.rsplit(":", 1)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/json\r\n"
        f"{header[0]}: {header[1]}\r\n\r\n"
    ).encode()
    samples: list[float] = []
    errors: list[int] = []
    # Warm-up: one request per connection path (caches, first-use imports).
    await _one_client(host, int(port), request, time.perf_counter() + 0.2, [], [])
    t0 = time.perf_counter()
    end = t0 + seconds
    with trio.fail_after(seconds + 60):
        async with trio.open_nursery() as nursery:
            for _ in range(clients):
                nursery.start_soon(_one_client, host, int(port), request, end, samples, errors)
    elapsed = time.perf_counter() - t0
    p50, p99 = _percentiles(samples)
    return Load(p50, p99, len(samples) / elapsed, len(samples), len(errors))


# ---------------------------------------------------------------- builds


def _tf_env(workspace: str, token: str, binary: Path, data_dir: Path, cli_config: Path
            ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(
        TF_IN_AUTOMATION="1", TF_INPUT="0", TF_CLI_CONFIG_FILE=str(cli_config),
        TF_VAR_burrow_workspace_name=workspace, TF_VAR_burrow_workspace_owner="bench",
        TF_VAR_burrow_workspace_transition="start", TF_VAR_burrow_agent_token=token,
        TF_VAR_burrow_access_url="http://127.0.0.1:1", TF_VAR_burrow_binary=str(binary),
        TF_VAR_data_dir=str(data_dir),
    )
    return env


ALONE = (["init", "-input=false", "-no-color"],
         ["apply", "-input=false", "-no-color", "-auto-approve"])
# What provisionerd runs for a start build (provisionerd/terraform.py).
AS_PROVISIONERD = (["init", "-input=false", "-no-color"],
                   ["plan", "-input=false", "-no-color", "-out=plan.out"],
                   ["show", "-json", "plan.out"],
                   ["apply", "-input=false", "-no-color", "-auto-approve", "plan.out"],
                   ["show", "-json"])


def terraform_alone(tmp: Path, binary: Path, index: int,
                    steps: tuple[list[str], ...] = ALONE) -> float:
    """Seconds for ``terraform init`` + ``terraform apply`` of templates/local in a fresh dir.

    ``steps`` may name other terraform subcommands to run in turn instead.

    Raises:
        BenchError: terraform is missing or failed.
    """
    if shutil.which("terraform") is None:
        raise BenchError("terraform not found on PATH")
    work = tmp / f"tf-alone-{len(steps)}-{index}"
    shutil.copytree(TEMPLATE_DIR, work)
    cli_config = work / "cli.tfrc"
    cli_config.write_text("")
    env = _tf_env(f"alone{len(steps)}-{index}", "token", binary, tmp / "tf-alone-data",
                  cli_config)
    t0 = time.perf_counter()
    for step in steps:
        cmd = ["terraform", *step]
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        if done.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed: {done.stderr[-1000:]}")
    return time.perf_counter() - t0


@dataclass
class BuildTimes:
    dispatch_ms: list[float]
    server_s: list[float]
    client_s: list[float]
    failures: list[str]  # builds that did not succeed: their error, counted in the report
    agent_token: str = ""  # the token the last successful build gave the dummy agent


async def builds(url: str, token: str, count: int, binary: Path, data_dir: Path) -> BuildTimes:
    """Create workspaces one after another, each waited for, until ``count`` succeeded.

    A failed build is recorded (``failures``, with its last log lines) and
    another workspace is tried, at most ``count + 3`` in all.

    Raises:
        BenchError: too many builds failed, or one took over 120 s.
    """
    from burrow.api_client import Client

    client = Client(url, token)
    out = BuildTimes([], [], [], [])
    variables = {"burrow_binary": str(binary), "data_dir": str(data_dir)}
    token_file = binary.parent / "agent-token"
    for i in range(count + 3):
        if len(out.server_s) == count:
            break
        t0 = time.perf_counter()
        ws = await client.create_workspace(f"bench{i}", "local", variables)
        build_id = (ws.get("latest_build") or {}).get("id")
        if not build_id:
            raise BenchError(f"workspace create returned no build: {ws}")
        with trio.fail_after(120):
            while True:
                b = await client.build(build_id)
                if b["status"] not in ("pending", "running"):
                    break
                await trio.sleep(0.01)
        elapsed = time.perf_counter() - t0
        if b["status"] != "succeeded":
            logs = await client.build_logs(build_id)
            tail = "\n".join(f"{ln['stage']}: {ln['output']}" for ln in logs["logs"][-8:])
            out.failures.append(f"build {i} ended {b['status']}: {b.get('error')}\n{tail}")
            sys.stderr.write(f"bench control: {out.failures[-1]}\n")
            continue
        # The template starts the agent in the background: its token lands shortly after.
        with trio.move_on_after(10):
            while True:
                seen = token_file.read_text().strip() if token_file.exists() else ""
                if seen and seen != out.agent_token:
                    out.agent_token = seen
                    break
                await trio.sleep(0.01)
        created = float(b["created_at"])
        started = float(b.get("started_at") or 0)
        completed = float(b.get("completed_at") or 0)
        out.dispatch_ms.append((started - created) * 1e3)
        out.server_s.append(completed - created)
        out.client_s.append(elapsed)
    if len(out.server_s) < count:
        raise BenchError(f"{len(out.failures)} builds failed:\n" + "\n".join(out.failures))
    return out


async def _setup(url: str) -> str:
    from burrow.api_client import Client
    from burrow.commands.templates import archive_directory

    client = Client(url)
    token = await client.create_first_user("bench", "bench@example.com", "bench-password-1")
    client.token = token
    await client.push_template("local", archive_directory(str(TEMPLATE_DIR)))
    return token


async def _measure_backend(url: str, args: argparse.Namespace, tmp: Path, binary: Path
                           ) -> dict[str, Any]:
    token = await _setup(url)
    times = await builds(url, token, args.builds, binary, tmp / "workspaces")
    agent_token = times.agent_token
    if not agent_token:
        raise BenchError("the dummy agent recorded no token")
    rows: dict[str, Any] = {}
    for name, path, header in (
        ("GET /workspaces", "/api/v2/workspaces", ("Burrow-Session-Token", token)),
        ("GET manifest", "/api/v2/workspaceagents/me/manifest",
         ("Burrow-Agent-Token", agent_token)),
    ):
        res = await load(url, path, header, args.clients, args.seconds)
        if res.errors:
            raise BenchError(f"{name}: {res.errors} non-200 answers")
        rows[name] = res.__dict__
    return {
        "api": rows,
        "dispatch_ms": times.dispatch_ms,
        "build_server_s": times.server_s,
        "build_client_s": times.client_s,
        "build_failures": times.failures,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    report: dict[str, Any] = {"clients": args.clients, "seconds": args.seconds,
                              "builds": args.builds, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="burrow-bench-control-") as tmpdir:
        tmp = Path(tmpdir)
        alone: list[float] = []
        five: list[float] = []
        for name in backends:
            btmp = tmp / name
            (btmp / "bin").mkdir(parents=True)
            binary = btmp / "bin" / "dummy-agent"
            binary.write_text(DUMMY_AGENT)
            binary.chmod(0o755)
            with contextlib.ExitStack() as stack:
                pg_url = stack.enter_context(postgres()) if name == "postgres" else None
                (btmp / "data").mkdir()
                url = stack.enter_context(burrow_server(btmp / "data", pg_url, args.daemons))
                result = trio.run(_measure_backend, url, args, btmp, binary)
            # Terraform alone, interleaved with the backends so drift hits both alike.
            for i in range(args.builds):
                alone.append(terraform_alone(btmp, binary, i))
                five.append(terraform_alone(btmp, binary, i, AS_PROVISIONERD))
            report["backends"][name] = result
        report["terraform_alone_s"] = alone
        report["terraform_as_provisionerd_s"] = five
    base = statistics.median(alone)
    report["terraform_alone_p50_s"] = base
    report["terraform_as_provisionerd_p50_s"] = statistics.median(five)
    for result in report["backends"].values():
        result["dispatch_p50_ms"], result["dispatch_p99_ms"] = _percentiles(result["dispatch_ms"])
        result["build_server_p50_s"] = statistics.median(result["build_server_s"])
        result["build_client_p50_s"] = statistics.median(result["build_client_s"])
        result["build_x_terraform"] = result["build_server_p50_s"] / base
    return report


def table(report: dict[str, Any]) -> str:
    out = [
        f"{report['clients']} clients x {report['seconds']:g} s per route;"
        f" {report['builds']} builds of templates/local per backend (dummy agent command)",
        "",
        f"{'backend':9} {'route':16} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'requests':>9}",
    ]
    for name, r in report["backends"].items():
        for route, a in r["api"].items():
            out.append(f"{name:9} {route:16} {a['p50_ms']:8.2f} {a['p99_ms']:8.2f}"
                       f" {a['req_s']:8.0f} {a['requests']:9d}")
    out += [
        "",
        f"{'backend':9} {'dispatch p50/max ms':>20} {'create->succeeded s (server/client)':>36}"
        f" {'x terraform alone':>18}",
    ]
    for name, r in report["backends"].items():
        failed = f"  ({len(r['build_failures'])} failed builds not counted)" \
            if r["build_failures"] else ""
        out.append(
            f"{name:9} {r['dispatch_p50_ms']:9.1f}/{max(r['dispatch_ms']):<10.1f}"
            f" {r['build_server_p50_s']:17.2f}/{r['build_client_p50_s']:<18.2f}"
            f" {r['build_x_terraform']:18.2f}{failed}"
        )
    out.append(f"{'terraform init+apply alone (the baseline)':47}"
               f" {report['terraform_alone_p50_s']:8.2f} s")
    out.append(f"{'terraform init/plan/show/apply/show alone':47}"
               f" {report['terraform_as_provisionerd_p50_s']:8.2f} s"
               "  (the commands provisionerd runs, for attribution)")
    return "\n".join(out)


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
        return value

    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench control",
        description="coderd API latency, job dispatch and builds vs terraform alone")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--clients", type=_positive(int), default=50,
                        help="concurrent API clients (default 50)")
    parser.add_argument("--seconds", type=_positive(float), default=5.0,
                        help="load per route (default 5)")
    parser.add_argument("--builds", type=_positive(int), default=3,
                        help="workspaces created per backend, and terraform-alone runs (default 3)")
    parser.add_argument("--daemons", type=_positive(int), default=3,
                        help="built-in provisioner daemons (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        sys.stderr.write(f"bench control: {exc}\n")
        return 1
    sys.stdout.write((json.dumps(report, indent=2) if args.json else table(report)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
