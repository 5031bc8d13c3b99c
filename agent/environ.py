"""The environment the agent gives to what it runs (sessions, scripts).

Children inherit the agent's environment minus its secrets: the agent token
must never reach a user's shell, its history, or a startup script's log.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# Variables the agent reads for itself and that no child may see.
SECRET_VARIABLES = frozenset({"BURROW_AGENT_TOKEN"})
# The agent's own shell bookkeeping: a session starts fresh, as under sshd
# (an inherited SHLVL would stop bash from reading ~/.bashrc for `ssh host cmd`).
SHELL_STATE_VARIABLES = frozenset({"SHLVL", "PWD", "OLDPWD", "_"})


def child_environ(*layers: Mapping[str, str]) -> dict[str, str]:
    """``os.environ`` without secrets, then each layer in order (later wins)."""
    dropped = SECRET_VARIABLES | SHELL_STATE_VARIABLES
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    for layer in layers:
        env.update(layer)
    return env
