"""``burrow agent --token-file``: the token read from a 0600 file; mistakes are one line.

The coderd here is a tiny HTTP server (a child process, killed by pid) that
records the agent token header it was sent and refuses it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent.test_agent_main import _agent_cli

pytestmark = pytest.mark.timeout(60)


def token_file(tmp: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp / "agent.token"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("text", "mode", "needle"), [
    ("tok\n", 0o644, "is readable by others (mode 0644): chmod 600 it"),
    ("tok\n", 0o640, "is readable by others (mode 0640)"),
    ("  \n", 0o600, "is empty"),
    (None, 0o600, "cannot read the token file"),
])
def test_token_file_mistakes_are_one_line_exit_2(tmp_path: Path, text: str | None, mode: int,
                                                 needle: str) -> None:
    path = token_file(tmp_path, text, mode) if text is not None else tmp_path / "missing"
    proc = _agent_cli("--url", "http://127.0.0.1:1", "--token-file", str(path),
                      "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert needle in proc.stderr


def test_the_token_comes_from_the_file(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    script = tmp_path / "coderd.py"
    script.write_text(
        "import http.server, sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        open({str(seen)!r}, 'a').write(self.headers['Burrow-Agent-Token'] + '\\n')\n"
        "        b = b'{\"message\": \"agent authentication required\"}'\n"
        "        self.send_response(401); self.send_header('Content-Length', str(len(b)))\n"
        "        self.end_headers(); self.wfile.write(b)\n"
        "    def log_message(self, *a): pass\n"
        "s = http.server.HTTPServer(('127.0.0.1', 0), H)\n"
        "print(s.server_address[1], flush=True)\n"
        "s.serve_forever()\n")
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}"
        path = token_file(tmp_path, "-file-token-\n")
        proc = _agent_cli("--url", url, "--token-file", str(path), "--data-dir",
                          str(tmp_path / "d"), env={"BURROW_AGENT_TOKEN": "from-env"})
    finally:
        server.kill()
        server.wait(10)
    assert proc.returncode == 1, proc.stderr
    assert "coderd refused the agent token" in proc.stderr
    assert seen.read_text() == "-file-token-\n"  # the file wins over the environment
