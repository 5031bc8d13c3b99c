"""burrow.sshconfig: the managed block, byte-exact preservation, and injection refusal.

The quoting is checked against the real OpenSSH parser (``ssh -G``) and the
real shell it hands ProxyCommand to.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from burrow import sshconfig as sc

OPTS = sc.Options(command=("/usr/bin/burrow",))


def test_block_renders_entries_with_every_directive() -> None:
    out = sc.render_block(OPTS, ["dev", "web-2"])
    assert out.refused == ()
    assert out.block.startswith(sc.START + "\n")
    assert out.block.endswith(sc.END + "\n")
    assert "Host burrow.dev\n  ProxyCommand /usr/bin/burrow ssh --stdio dev\n" in out.block
    for line in ("ConnectTimeout 30", "LogLevel ERROR", "StrictHostKeyChecking no",
                 "UserKnownHostsFile /dev/null"):
        assert out.block.count(line) == 2
    pinned = sc.render_block(
        sc.Options(command=("b",), host_key=sc.HOST_KEY_KNOWN_HOSTS,
                   known_hosts_file="/cfg dir/known_hosts"), ["dev"]).block
    assert 'UserKnownHostsFile "/cfg dir/known_hosts"' in pinned
    assert "StrictHostKeyChecking accept-new" in pinned
    assert "HostKeyAlias burrow.dev" in pinned


@pytest.mark.parametrize("name", [
    "dev\nProxyCommand touch /tmp/pwned", "dev ProxyCommand", "a b", 'x"y', "x'y", "50%",
    "*", "a,b", "!x", "", "-oProxyCommand=x", "dev\r", "dev\x00", "é", "a" * 64, "a/b",
])
def test_unsafe_workspace_names_are_refused(name: str) -> None:
    with pytest.raises(sc.SSHConfigError):
        sc.render_entry(OPTS, name)
    out = sc.render_block(OPTS, ["ok", name])
    assert [n for n, _ in out.refused] == [name]
    assert "Host burrow.ok\n" in out.block
    body = out.block.splitlines()
    # nothing but our own directives and comments made it into the block
    allowed = ("#", "Host ", "  ProxyCommand ", "  ConnectTimeout ", "  LogLevel ",
               "  StrictHostKeyChecking ", "  UserKnownHostsFile ", "")
    assert all(line.startswith(allowed) for line in body)
    assert "pwned" not in out.block


def test_bad_shared_values_are_refused() -> None:
    with pytest.raises(sc.SSHConfigError):
        sc.render_block(sc.Options(command=("/bin/bur\nrow",)), [])
    with pytest.raises(sc.SSHConfigError):
        sc.render_block(sc.Options(command=("b",), host_prefix="x y."), [])
    with pytest.raises(sc.SSHConfigError):
        sc.quote_value('/a"b')
    with pytest.raises(sc.SSHConfigError):
        sc.render_block(sc.Options(command=("b",), extra_env=(("A;B", "x"),)), [])


def test_apply_appends_then_replaces_preserving_outside_bytes() -> None:
    user = "Host *\r\n  ServerAliveInterval 5\n\n# trailing comment without newline"
    block1 = sc.render_block(OPTS, ["dev"]).block
    block2 = sc.render_block(OPTS, ["dev", "two"]).block
    once = sc.apply_block(user, block1)
    assert once.startswith(user)
    assert sc.apply_block(once, block1) == once  # idempotent
    twice = sc.apply_block(once, block2)
    assert twice.startswith(user)
    assert "burrow.two" in twice
    # block in the middle: both sides byte for byte
    middle = "Host a\n  User x\n" + block1 + "Host b\n\tUser y  \n"
    out = sc.apply_block(middle, block2)
    assert out == "Host a\n  User x\n" + block2 + "Host b\n\tUser y  \n"
    assert sc.apply_block("", block1) == block1
    assert sc.apply_block("Host a", block1) == "Host a\n\n" + block1


@pytest.mark.parametrize("text", [
    sc.START + "\n", sc.END + "\n", sc.END + "\n" + sc.START + "\n",
    (sc.START + "\n" + sc.END + "\n") * 2,
])
def test_damaged_blocks_are_refused(text: str) -> None:
    with pytest.raises(sc.SSHConfigError):
        sc.apply_block(text, sc.render_block(OPTS, []).block)


def test_diff() -> None:
    old = "Host a\n"
    new = sc.apply_block(old, sc.render_block(OPTS, ["dev"]).block)
    diff = sc.unified_diff(old, new, "cfg")
    assert diff.startswith("--- cfg\n+++ cfg (burrow config-ssh)\n")
    assert "+Host burrow.dev\n" in diff
    assert sc.unified_diff(new, new, "cfg") == ""


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_openssh_parses_quoted_values_back_to_the_same_argv(tmp_path: Path) -> None:
    """Awkward paths (spaces, quotes, %, $, ;) survive ssh's parser and the shell."""
    weird_bin = str(tmp_path / "my bin's %h $(touch pwned); x")
    opts = sc.Options(command=(weird_bin, "-m"), host_key=sc.HOST_KEY_KNOWN_HOSTS,
                      known_hosts_file=str(tmp_path / "kh 100%"),
                      extra_env=(("BURROW_CONFIG_DIR", str(tmp_path / "c d")),))
    cfg = tmp_path / "config"
    cfg.write_text(sc.apply_block("", sc.render_block(opts, ["dev"]).block))
    out = subprocess.run(["ssh", "-F", str(cfg), "-G", "burrow.dev"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    got = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
    assert got["userknownhostsfile"].strip('"') == str(tmp_path / "kh 100%")
    # ssh -G shows ProxyCommand before %-expansion; expand %% as ssh does, then let sh split it
    proxy = got["proxycommand"].replace("%%", "%")
    argv = subprocess.run(
        ["sh", "-c", f'exec python3 -c "import sys; print(repr(sys.argv[1:]))" {proxy}'],
        capture_output=True, text=True, timeout=10, check=True, cwd=tmp_path,
    ).stdout.strip()
    want = ["env", f"BURROW_CONFIG_DIR={tmp_path / 'c d'}", weird_bin, "-m", "ssh", "--stdio",
            "dev"]
    assert argv == repr(want)
    assert not (tmp_path / "pwned").exists()
