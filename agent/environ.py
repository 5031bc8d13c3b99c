"""The environment the agent gives to what it runs (sessions, scripts).

Children inherit the agent's environment minus its secrets: the agent token
must never reach a user's shell, its history, or a startup script's log.

The agent is started by a template under Terraform, so its environment is
Terraform's: ``TF_VAR_burrow_agent_token`` (the token itself), every other
``TF_VAR_*`` the provisioner was given, and Terraform's own ``TF_*`` settings
(``TF_CLI_CONFIG_FILE`` and ``TF_INPUT`` would steer a user's own terraform
in the workspace).  None of it is meant for the workspace: :func:`is_secret`
drops every ``TF_*`` variable, and every ``BURROW_*`` one whose name says it
carries a credential or points at one (``TOKEN``, ``PASSWORD``, ``SECRET``,
``PSK``, ``KEY``: ``BURROW_AGENT_TOKEN``, ``BURROW_TOKEN_FILE``, ...).
Template authors give sessions variables through the manifest's ``env``.

Threat model: this stops accidental exposure (``env``, shell history, a
script's log shipped to coderd, a tool that dumps its environment).  Code in
a session runs as the agent's user and could still read the agent's token
file; the token only lets it act as this workspace's agent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

# Variables the agent reads for itself and that no child may see.
SECRET_VARIABLES = frozenset({"BURROW_AGENT_TOKEN"})
# Words that mark a burrow variable as a credential (or the path of one).
SECRET_WORDS = ("TOKEN", "PASSWORD", "SECRET", "PSK", "KEY")
# The agent's own shell bookkeeping: a session starts fresh, as under sshd
# (an inherited SHLVL would stop bash from reading ~/.bashrc for `ssh host cmd`).
SHELL_STATE_VARIABLES = frozenset({"SHLVL", "PWD", "OLDPWD", "_"})


def is_secret(name: str) -> bool:
    """Whether the variable ``name`` must not reach the agent's children."""
    if name in SECRET_VARIABLES or name.startswith("TF_"):
        return True
    return name.startswith("BURROW_") and any(word in name for word in SECRET_WORDS)


def scrub(env: MutableMapping[str, str]) -> list[str]:
    """Remove every secret variable from ``env`` (e.g. ``os.environ``); their names."""
    names = sorted(k for k in env if is_secret(k))
    for name in names:
        del env[name]
    return names


def child_environ(*layers: Mapping[str, str]) -> dict[str, str]:
    """``os.environ`` without secrets, then each layer in order (later wins)."""
    env = {k: v for k, v in os.environ.items()
           if k not in SHELL_STATE_VARIABLES and not is_secret(k)}
    for layer in layers:
        env.update(layer)
    return env
