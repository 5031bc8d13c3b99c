"""The managed block ``burrow config-ssh`` keeps in an OpenSSH client config (sans-IO).

Theory of operation.  The user's ``~/.ssh/config`` is theirs; burrow owns
exactly the lines between two marker comments::

    # ------------START-BURROW-----------
    ...one Host entry per workspace...
    # ------------END-BURROW-------------

:func:`apply_block` replaces what is between the markers (or appends a new
block at the end) and returns the new text; everything outside the markers
comes back byte for byte, so running it twice changes nothing.  A file with
a start marker and no end marker (or two blocks) is refused rather than
guessed at: :class:`SSHConfigError`.

Injection.  Workspace names come from the server, and the executable and
config paths from the environment.  OpenSSH reads one directive per line,
expands ``%`` tokens in ``ProxyCommand`` and ``UserKnownHostsFile``, and runs
``ProxyCommand`` with ``/bin/sh -c``.  So every value written here is
checked and quoted:

* host aliases (workspace names) must match :data:`HOST_NAME` (letters,
  digits, ``.``, ``_``, ``-``) -- anything else (newline, space, quote,
  ``%``, ``*``, ``ProxyCommand`` after a newline) is refused;
* ``ProxyCommand`` arguments are shell-quoted one by one (``shlex.quote``),
  then ``%`` is doubled;
* file names are double-quoted when needed, ``%`` doubled; a ``"`` cannot be
  expressed inside an ssh_config value, so it is refused;
* any control character (newline, CR, NUL, ...) is refused everywhere.

No I/O here: the command (``burrow/commands/config_ssh.py``) reads and
writes the file.
"""

from __future__ import annotations

import difflib
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

START = "# ------------START-BURROW-----------"
END = "# ------------END-BURROW-------------"
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters that need no quoting in an ssh_config value.
_PLAIN = re.compile(r"[A-Za-z0-9_./@:+=,-]+")

# Host key policies for the generated entries.
HOST_KEY_TUNNEL = "tunnel"
HOST_KEY_KNOWN_HOSTS = "known-hosts"
HOST_KEY_POLICIES = (HOST_KEY_TUNNEL, HOST_KEY_KNOWN_HOSTS)


class SSHConfigError(ValueError):
    """A value cannot be written safely, or the file's managed block is malformed."""


def check_host_name(name: str, what: str = "workspace name") -> str:
    """Return ``name`` if it is safe as (part of) a Host alias.

    Raises:
        SSHConfigError: it contains anything but letters, digits, ``.``, ``_``
            and ``-``, starts with a symbol, or is longer than 63 characters.
    """
    if not HOST_NAME.fullmatch(name):
        raise SSHConfigError(
            f"{what} {name!r} cannot be used in an SSH config: only letters, digits,"
            " '.', '_' and '-' are allowed (at most 63, starting with a letter or digit)"
        )
    return name


def _no_control(value: str, what: str) -> None:
    if _CONTROL.search(value):
        raise SSHConfigError(f"{what} {value!r} contains a control character (newline?)")


def quote_command(argv: Sequence[str]) -> str:
    """A ``ProxyCommand`` value that runs exactly ``argv`` (shell-quoted, ``%`` doubled).

    Raises:
        SSHConfigError: an argument contains a control character, or argv is empty.
    """
    if not argv:
        raise SSHConfigError("empty command")
    for arg in argv:
        _no_control(arg, "command argument")
    return " ".join(shlex.quote(arg) for arg in argv).replace("%", "%%")


def quote_value(value: str, what: str = "value") -> str:
    """An ssh_config value (a file name): double-quoted when needed, ``%`` doubled.

    Raises:
        SSHConfigError: it contains a control character or a double quote, or is empty.
    """
    _no_control(value, what)
    if not value or '"' in value:
        raise SSHConfigError(f"{what} {value!r} cannot be written in an SSH config")
    value = value.replace("%", "%%")
    return value if _PLAIN.fullmatch(value) else f'"{value}"'


@dataclass(frozen=True)
class Options:
    """What every generated entry shares.

    Attributes:
        command: argv prefix of the ProxyCommand (e.g. ``["/usr/bin/burrow"]``);
            ``ssh --stdio <workspace>`` is appended.
        host_prefix: alias prefix, ``burrow.`` by default.
        host_key: :data:`HOST_KEY_TUNNEL` (the tunnel authenticates the agent
            by its coordinator-vouched key, so SSH host keys are not checked)
            or :data:`HOST_KEY_KNOWN_HOSTS` (SSH also pins each agent's host
            key, trust on first use, in ``known_hosts_file``).
        known_hosts_file: used with :data:`HOST_KEY_KNOWN_HOSTS`.
        connect_timeout: seconds, ``ConnectTimeout``.
        extra_env: ``NAME=value`` pairs put before the command with ``env``
            (e.g. an explicit ``BURROW_CONFIG_DIR``).
    """

    command: tuple[str, ...]
    host_prefix: str = "burrow."
    host_key: str = HOST_KEY_TUNNEL
    known_hosts_file: str = ""
    connect_timeout: int = 30
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def host_alias(options: Options, workspace: str) -> str:
    """``burrow.<workspace>``.  Raises SSHConfigError for an unsafe name or prefix."""
    check_host_name(workspace)
    if not re.fullmatch(r"[A-Za-z0-9._-]*", options.host_prefix):
        raise SSHConfigError(f"host prefix {options.host_prefix!r} is not allowed")
    return options.host_prefix + workspace


def proxy_argv(options: Options, workspace: str) -> list[str]:
    """The argv OpenSSH runs for ``workspace`` (before quoting)."""
    argv: list[str] = []
    if options.extra_env:
        argv.append("env")
        for name, value in options.extra_env:
            if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                raise SSHConfigError(f"environment variable name {name!r} is not allowed")
            argv.append(f"{name}={value}")
    return [*argv, *options.command, "ssh", "--stdio", check_host_name(workspace)]


def render_entry(options: Options, workspace: str) -> str:
    """One ``Host`` entry (lines ending in ``\\n``).  Raises SSHConfigError."""
    alias = host_alias(options, workspace)
    lines = [
        f"Host {alias}",
        f"  ProxyCommand {quote_command(proxy_argv(options, workspace))}",
        f"  ConnectTimeout {int(options.connect_timeout)}",
        "  LogLevel ERROR",
    ]
    if options.host_key == HOST_KEY_TUNNEL:
        lines += ["  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null"]
    elif options.host_key == HOST_KEY_KNOWN_HOSTS:
        if not options.known_hosts_file:
            raise SSHConfigError("known-hosts mode needs a known_hosts file")
        lines += [
            "  StrictHostKeyChecking accept-new",
            f"  UserKnownHostsFile {quote_value(options.known_hosts_file, 'known_hosts file')}",
            f"  HostKeyAlias {alias}",
        ]
    else:
        raise SSHConfigError(f"unknown host key policy {options.host_key!r}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Rendered:
    """A rendered block and the workspaces that were refused (name, reason)."""

    block: str
    refused: tuple[tuple[str, str], ...]


def render_block(options: Options, workspaces: Sequence[str]) -> Rendered:
    """The whole managed block, markers included; unsafe names are refused, not written.

    Raises:
        SSHConfigError: a shared option (command, prefix, file) is unsafe.
    """
    parts = [
        START + "\n",
        "# Managed by `burrow config-ssh`: edits between these markers are overwritten.\n",
    ]
    refused: list[tuple[str, str]] = []
    host_alias(options, "x")  # fail early on a bad prefix
    quote_command(proxy_argv(options, "x"))  # ... or a bad command
    for name in sorted(set(workspaces)):
        try:
            parts.append("\n" + render_entry(options, name))
        except SSHConfigError as exc:
            refused.append((name, str(exc)))
    parts.append(END + "\n")
    return Rendered("".join(parts), tuple(refused))


def _find_block(text: str) -> tuple[int, int] | None:
    """(start, end) offsets of the managed block, end after its end line's newline."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == START]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == END]
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise SSHConfigError(
            "the SSH config has a damaged burrow block (start and end markers do not pair up);"
            " fix or remove the lines between the BURROW markers and run again"
        )
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    return offsets[starts[0]], offsets[ends[0] + 1]


def apply_block(text: str, block: str) -> str:
    """``text`` with its managed block replaced by ``block`` (appended if absent).

    Raises:
        SSHConfigError: the existing block's markers do not pair up.
    """
    found = _find_block(text)
    if found is not None:
        start, end = found
        tail = text[end:]
        if end == len(text) and not text.endswith("\n"):
            block = block.rstrip("\n")
        return text[:start] + block + tail
    if not text:
        return block
    sep = "" if text.endswith("\n") else "\n"
    return text + sep + "\n" + block


def unified_diff(old: str, new: str, path: str) -> str:
    """A unified diff of the change (empty when nothing changes)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True),
            fromfile=path, tofile=path + " (burrow config-ssh)",
        )
    )
