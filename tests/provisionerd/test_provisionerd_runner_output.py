"""Runner keeps every byte terraform printed, even what is still in the pipe at exit.

A stand-in `terraform` (a shell script, since only its output matters here) prints a
large JSON document and exits at once; the last pipe-full is then still unread when
the process is reaped. Losing it made `terraform show -json` intermittently unparsable.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import trio

from provisionerd.terraform import Runner


async def test_output_written_just_before_exit_is_kept(tmp_path: Path) -> None:
    doc = {"values": [{"n": i, "pad": "x" * 100} for i in range(3000)]}  # ~330 KB
    (tmp_path / "doc.json").write_text(json.dumps(doc))
    fake = tmp_path / "terraform"
    fake.write_text(f"#!/bin/sh\nexec cat {tmp_path / 'doc.json'}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    runner = Runner(str(fake), tmp_path, {"PATH": "/usr/bin:/bin"}, lambda *_: None,
                    trio.Event(), 1.0)
    for _ in range(25):
        with trio.fail_after(30):
            out = await runner("show", "-json", capture=True, echo=False)
        assert json.loads(out) == doc
