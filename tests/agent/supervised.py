"""A stand-in agent and a supervisor driver for the supervisor tests (not a test module).

``python -m tests.agent.supervised agent OUT MODE`` behaves like an agent with
one SSH session: it records a session process group (a ``sleep`` leader and a
background ``sleep`` in the group) in ``OUT/sessions`` and starts an escapee
that leaves the group (double fork + ``setsid``), writes ``OUT/pids.<pid>``
(``agent session background escapee``), then waits; SIGTERM exits 0 without
ending anything (the supervisor must).  MODE ``exit0``/``exit3`` exits at once.

``python -m tests.agent.supervised supervise JSON`` runs a
:class:`~agent.supervise.Supervisor` with the options in JSON.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.procgroups import Groups
from agent.supervise import RestartPolicy, Supervisor


def fake_agent(out: Path, mode: str) -> int:
    if mode == "exit0":
        return 0
    if mode == "exit3":
        return 3
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    groups = Groups()
    groups.record_in(out / "sessions")
    me = os.getpid()
    bg, esc = out / f"bg.{me}", out / f"esc.{me}"
    session = subprocess.Popen(["sh", "-c", f'sleep 600 & echo $! > "{bg}"; exec sleep 601'],
                               start_new_session=True)
    groups.add(session.pid)
    # The escapee: its parent sh exits at once, so it is orphaned (to the subreaper).
    subprocess.run(["sh", "-c", f"setsid sh -c 'echo $$ > \"{esc}\"; exec sleep 602' &"],
                   check=True)
    deadline = time.monotonic() + 10
    while not (bg.exists() and bg.read_text() and esc.exists() and esc.read_text()):
        if time.monotonic() > deadline:
            return 4
        time.sleep(0.02)
    pids = f"{me} {session.pid} {bg.read_text().strip()} {esc.read_text().strip()}\n"
    (out / f"pids.{me}.tmp").write_text(pids)
    os.replace(out / f"pids.{me}.tmp", out / f"pids.{me}")
    while True:
        time.sleep(1)


def run_supervisor(config: dict[str, object]) -> int:
    logging.basicConfig(level="INFO", stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = [str(a) for a in config["argv"]]  # type: ignore[attr-defined]
    policy = RestartPolicy(**config.get("policy", {}))  # type: ignore[arg-type]
    return Supervisor(argv, dict(os.environ), run_dir=Path(str(config["run_dir"])),
                      policy=policy, session_grace=float(config.get("grace", 1.0)),  # type: ignore[arg-type]
                      stop_timeout=float(config.get("stop_timeout", 5.0))).run()  # type: ignore[arg-type]


if __name__ == "__main__":
    if sys.argv[1] == "agent":
        sys.exit(fake_agent(Path(sys.argv[2]), sys.argv[3]))
    sys.exit(run_supervisor(json.loads(sys.argv[2])))
