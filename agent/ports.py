"""Listening TCP ports in the workspace, from /proc/net/tcp and /proc/net/tcp6.

The parser is sans-IO (text in, ports out).  Each data line of those files
reads ``sl local rem st ... uid timeout inode ...``; ``local`` is
``ADDR:PORT`` in hex, the address in the kernel's byte order (host order per
32-bit word), the port big-endian; ``st`` 0A is LISTEN.  The owning process is
found by matching the socket inode against ``/proc/<pid>/fd/*`` links
(``socket:[inode]``), which only works for processes we may inspect: the
name is None otherwise.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

TCP_LISTEN = 0x0A


class ProcNetParseError(ValueError):
    """A line of /proc/net/tcp{,6} that does not have the kernel's shape."""

    def __init__(self, line_no: int, line: str, reason: str) -> None:
        super().__init__(f"/proc/net/tcp line {line_no}: {reason}: {line.strip()[:80]!r}")
        self.line_no = line_no


@dataclass(frozen=True)
class ListeningPort:
    """A TCP socket in LISTEN state.

    Attributes:
        port: the port number.
        address: the bound address (``0.0.0.0``, ``::``, ``127.0.0.1``...).
        family: ``"tcp"`` (IPv4) or ``"tcp6"``.
        uid: owner uid of the socket.
        inode: the socket's inode, which ties it to a process.
        pid: the owning process, when readable.
        process: the owning process's name (``/proc/<pid>/comm``), when readable.
    """

    port: int
    address: str
    family: str
    uid: int
    inode: int
    pid: int | None = None
    process: str | None = None


def _decode_address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) not in (4, 16):
        raise ValueError(f"address of {len(raw)} bytes")
    if sys.byteorder == "little":  # each 32-bit word is in host order
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(raw))


def parse_proc_net_tcp(text: str, family: str = "tcp") -> list[ListeningPort]:
    """The LISTEN sockets in the text of /proc/net/tcp (or tcp6, ``family="tcp6"``).

    Raises:
        ProcNetParseError: a data line is malformed (the header line and blank
            lines are skipped).
    """
    ports: list[ListeningPort] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "sl":
            continue
        if len(fields) < 10 or not fields[0].endswith(":"):
            raise ProcNetParseError(line_no, line, "too few fields")
        try:
            state = int(fields[3], 16)
            if state != TCP_LISTEN:
                continue
            hex_addr, hex_port = fields[1].split(":")
            port = ListeningPort(
                port=int(hex_port, 16),
                address=_decode_address(hex_addr),
                family=family,
                uid=int(fields[7]),
                inode=int(fields[9]),
            )
        except ValueError as exc:
            raise ProcNetParseError(line_no, line, str(exc)) from exc
        ports.append(port)
    return ports


def socket_owners(proc: Path = Path("/proc")) -> dict[int, tuple[int, str]]:
    """Socket inode -> (pid, process name) for every process we may inspect."""
    owners: dict[int, tuple[int, str]] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = os.scandir(f"{entry.path}/fd")
        except OSError:
            continue  # not ours, or gone
        with fds:
            inodes = []
            for fd in fds:
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes.append(int(target[8:-1]))
        if not inodes:
            continue
        try:
            name = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue
        for inode in inodes:
            owners.setdefault(inode, (pid, name))
    return owners


def listening_ports(proc: Path = Path("/proc"), *, with_owners: bool = True) -> list[ListeningPort]:
    """The workspace's listening TCP ports, sorted by port, with owners if readable.

    A missing tcp6 file (IPv6 disabled) is not an error.

    Raises:
        ProcNetParseError: the kernel's file has an unexpected shape.
        OSError: /proc/net/tcp is unreadable.
    """
    ports = parse_proc_net_tcp((proc / "net" / "tcp").read_text(), "tcp")
    with contextlib.suppress(FileNotFoundError):
        ports += parse_proc_net_tcp((proc / "net" / "tcp6").read_text(), "tcp6")
    if with_owners and ports:
        owners = socket_owners(proc)
        ports = [
            replace(p, pid=owners[p.inode][0], process=owners[p.inode][1])
            if p.inode in owners
            else p
            for p in ports
        ]
    return sorted(ports, key=lambda p: (p.port, p.family, p.address))
