"""Listening ports from /proc: the parser on captured text, then one live check."""

from __future__ import annotations

import os
import socket
import sys

import pytest

from agent.ports import ListeningPort, ProcNetParseError, listening_ports, parse_proc_net_tcp

pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="samples captured little-endian")

# Captured on this machine kind (x86-64): two listeners and one established socket.
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:9053 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21950 1 00000000a22ff52b 100 0 0 10 0
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1060 1 000000006b574fa4 100 0 0 10 0
   3: 0100007F:C4EA 0100007F:B177 06 00000000:00000000 03:00001191 00000000     0        0 0 3 000000004353bb57
"""  # noqa: E501

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:E721 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 46791 1 00000000dd6bcaba 100 0 0 10 0
   1: 00000000000000000000000001000000:9991 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 46790 1 00000000eb3338a5 100 0 0 10 0
"""  # noqa: E501


def test_parse_ipv4_keeps_only_listeners() -> None:
    assert parse_proc_net_tcp(TCP) == [
        ListeningPort(port=0x9053, address="127.0.0.1", family="tcp", uid=0, inode=21950),
        ListeningPort(port=2024, address="0.0.0.0", family="tcp", uid=1000, inode=1060),
    ]


def test_parse_ipv6() -> None:
    assert parse_proc_net_tcp(TCP6, "tcp6") == [
        ListeningPort(port=59169, address="::", family="tcp6", uid=0, inode=46791),
        ListeningPort(port=39313, address="::1", family="tcp6", uid=0, inode=46790),
    ]


def test_header_only_and_blank_lines() -> None:
    assert parse_proc_net_tcp(TCP.splitlines()[0] + "\n\n") == []


@pytest.mark.parametrize(
    "line",
    [
        "   0: 0100007F:9053 00000000:0000 0A",
        "   0: 0100007Z:9053 00000000:0000 0A 0:0 00:0 0 0 0 21950",
        "   0: 0100007F:9053 00000000:0000 XX 0:0 00:0 0 0 0 21950",
        "   0: 01007F:9053 00000000:0000 0A 0:0 00:0 0 0 0 21950",
        "   0: 0100007F 00000000:0000 0A 0:0 00:0 0 0 0 21950",
    ],
)
def test_malformed_line_is_a_clear_error(line: str) -> None:
    with pytest.raises(ProcNetParseError, match="line 2") as info:
        parse_proc_net_tcp(TCP.splitlines()[0] + "\n" + line + "\n")
    assert info.value.line_no == 2


def test_live_listener_is_reported_with_its_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        found = [p for p in listening_ports() if p.port == port]
        assert len(found) == 1
        assert found[0].address == "127.0.0.1"
        assert found[0].family == "tcp"
        assert found[0].pid == os.getpid()
        with open(f"/proc/{os.getpid()}/comm") as f:
            assert found[0].process == f.read().strip()
    assert not [p for p in listening_ports(with_owners=False) if p.port == port]
