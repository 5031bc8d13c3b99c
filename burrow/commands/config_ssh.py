"""``burrow config-ssh``: a ``Host burrow.<workspace>`` entry per workspace in ~/.ssh/config.

Each entry's ``ProxyCommand`` is ``<burrow> ssh --stdio <workspace>``, so
plain ``ssh``, ``scp``, ``sftp``, ``rsync`` and editors reach the workspace
through the tunnel.  Host keys: by default (``--ssh-host-key tunnel``) SSH
does not check them (``StrictHostKeyChecking no``, ``UserKnownHostsFile
/dev/null``) because the tunnel already authenticated the agent by the key
the coordinator vouched for -- the SSH host key adds nothing, and it changes
whenever a workspace is rebuilt.  ``--ssh-host-key known-hosts`` pins each
agent's host key on first use in ``<config dir>/known_hosts`` instead.

The file is rewritten atomically (temp file + rename, mode 0600); content
outside the managed block is preserved byte for byte.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from burrow.flags import UsageError, add, add_bool


def register(sub: Any) -> None:
    p = sub.add_parser(
        "config-ssh",
        help="add a Host burrow.<workspace> entry per workspace to ~/.ssh/config",
        description="Write a managed block into the OpenSSH client config so that "
        "`ssh burrow.<workspace>` works. Idempotent; --dry-run shows the diff.",
    )
    add(p, "--ssh-config-file", default="~/.ssh/config", help="the OpenSSH config to edit")
    add_bool(p, "--dry-run", help="print the unified diff and write nothing")
    add(p, "--ssh-host-key", default="tunnel", choices=("tunnel", "known-hosts"),
        help="tunnel: the tunnel authenticates the agent, SSH host keys are not checked; "
        "known-hosts: also pin host keys (trust on first use) in <config dir>/known_hosts")
    add(p, "--host-prefix", default="burrow.", help="prefix of the Host aliases")
    p.set_defaults(run=run)


def burrow_argv() -> list[str]:
    """How to run this same burrow: the ``burrow`` script, or ``python -m burrow.cli``."""
    script = sys.argv[0] if sys.argv else ""
    if os.path.basename(script) == "burrow" and os.path.isfile(script):
        return [os.path.abspath(script)]
    return [sys.executable, "-m", "burrow.cli"]


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` (temp file in the same dir, fsync, rename; 0600)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.burrow-{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    from burrow import sshconfig
    from burrow.api_client import config_dir, run_command, session_client

    # A symlinked config (dotfile managers) is edited where it points, not replaced.
    path = os.path.realpath(os.path.expanduser(args.ssh_config_file))
    env: tuple[tuple[str, str], ...] = ()
    if os.environ.get("BURROW_CONFIG_DIR"):
        env = (("BURROW_CONFIG_DIR", os.path.abspath(config_dir())),)
    options = sshconfig.Options(
        command=tuple(burrow_argv()),
        host_prefix=args.host_prefix,
        host_key=args.ssh_host_key,
        known_hosts_file=os.path.join(os.path.abspath(config_dir()), "known_hosts"),
        extra_env=env,
    )
    try:
        sshconfig.render_block(options, [])
    except sshconfig.SSHConfigError as exc:
        raise UsageError(str(exc)) from None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    except (OSError, UnicodeDecodeError) as exc:
        sys.stderr.write(f"burrow config-ssh: cannot read {path}: {exc}\n")
        return 1

    async def main() -> int:
        workspaces = await session_client().workspaces()
        rendered = sshconfig.render_block(options, [w["name"] for w in workspaces])
        for _name, reason in rendered.refused:
            sys.stderr.write(f"burrow config-ssh: skipped: {reason}\n")
        try:
            new = sshconfig.apply_block(old, rendered.block)
        except sshconfig.SSHConfigError as exc:
            sys.stderr.write(f"burrow config-ssh: {path}: {exc}\n")
            return 1
        if args.dry_run:
            sys.stdout.write(sshconfig.unified_diff(old, new, path))
            return 0
        if new == old:
            print(f"{path} is up to date ({len(workspaces) - len(rendered.refused)} workspaces).")
            return 0
        try:
            write_atomic(path, new)
        except OSError as exc:
            sys.stderr.write(f"burrow config-ssh: cannot write {path}: {exc}\n")
            return 1
        hosts = [
            sshconfig.host_alias(options, w["name"]) for w in workspaces
            if w["name"] not in {n for n, _ in rendered.refused}
        ]
        print(f"Updated {path}. You can now reach your workspaces with:")
        for host in sorted(hosts):
            print(f"  ssh {host}")
        return 0

    return run_command("config-ssh", main)
