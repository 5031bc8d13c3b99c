"""What a build made: resources and agents, read from ``terraform show -json``.

The template convention (documented in ``templates/README.md``):

* **Agents** are declared in an output named ``burrow_agents``: a list of
  objects, each with a ``name`` (required, unique) and a ``resource`` (the
  address of the resource that runs the agent, e.g. ``terraform_data.agent``
  or ``terraform_data.agent[0]``; optional).  Any other keys (``os``,
  ``arch``, ``directory``, ``startup_script``, ``env`` ...) are passed
  through to coderd untouched.
* A resource is **computational** if an agent names it in ``resource``
  (with or without its ``[index]``), else **peripheral**.
* A resource is **ephemeral** if its ``count`` or ``for_each`` expression
  refers to ``var.burrow_workspace_transition`` — that is what makes it go
  away on stop — else **persistent**.  A template may also list addresses in
  an output ``burrow_ephemeral`` (list of strings) to mark them ephemeral.

The classification needs the configuration, which only a saved plan's JSON
carries; the resources themselves come from the state after apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

TRANSITION_VAR = "var.burrow_workspace_transition"
AGENTS_OUTPUT = "burrow_agents"
EPHEMERAL_OUTPUT = "burrow_ephemeral"

_INDEX = re.compile(r"\[[^\]]*\]$")


class ResourceError(Exception):
    """Terraform's JSON does not have the expected shape or agents are malformed."""


@dataclass(frozen=True)
class Resource:
    """One managed resource in the workspace's state after a build."""

    address: str
    type: str
    name: str
    computational: bool
    ephemeral: bool

    def to_json(self) -> dict[str, Any]:
        """The JSON form sent to coderd."""
        return {
            "address": self.address,
            "type": self.type,
            "name": self.name,
            "kind": "computational" if self.computational else "peripheral",
            "lifetime": "ephemeral" if self.ephemeral else "persistent",
        }


@dataclass(frozen=True)
class Agent:
    """An agent declared in the ``burrow_agents`` output."""

    name: str
    resource: str | None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON form sent to coderd: ``extra`` keys plus name and resource."""
        return {**self.extra, "name": self.name, "resource": self.resource}


def _strip_index(address: str) -> str:
    return _INDEX.sub("", address)


def ephemeral_addresses(plan: dict[str, Any]) -> set[str]:
    """Addresses (without index) of root-module resources gone after stop.

    Args:
        plan: ``terraform show -json <planfile>`` parsed.

    Raises:
        ResourceError: ``configuration`` has the wrong shape.
    """
    config = plan.get("configuration", {})
    if not isinstance(config, dict):
        raise ResourceError("plan JSON: configuration is not an object")
    root = config.get("root_module", {})
    out: set[str] = set()
    for res in root.get("resources", []) if isinstance(root, dict) else []:
        if not isinstance(res, dict) or res.get("mode") != "managed":
            continue
        refs: list[Any] = []
        for key in ("count_expression", "for_each_expression"):
            expr = res.get(key)
            if isinstance(expr, dict):
                refs.extend(expr.get("references", []))
        if TRANSITION_VAR in refs:
            out.add(str(res.get("address")))
    return out


def _walk_modules(module: dict[str, Any]) -> list[dict[str, Any]]:
    found = [r for r in module.get("resources", []) if isinstance(r, dict)]
    for child in module.get("child_modules", []):
        if isinstance(child, dict):
            found.extend(_walk_modules(child))
    return found


def parse_agents(outputs: dict[str, Any]) -> list[Agent]:
    """The agents declared in the ``burrow_agents`` output (empty if none).

    Raises:
        ResourceError: the output is not a list of objects with unique
            string ``name`` keys.
    """
    out = outputs.get(AGENTS_OUTPUT)
    if out is None:
        return []
    value = out.get("value") if isinstance(out, dict) else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise ResourceError(f"output {AGENTS_OUTPUT} must be a list of objects")
    agents: list[Agent] = []
    seen: set[str] = set()
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise ResourceError(f"each entry of output {AGENTS_OUTPUT} needs a string 'name'")
        name = item["name"]
        if name in seen:
            raise ResourceError(f"duplicate agent name {name!r} in output {AGENTS_OUTPUT}")
        seen.add(name)
        resource = item.get("resource")
        if resource is not None and not isinstance(resource, str):
            raise ResourceError(f"agent {name!r}: 'resource' must be a string address")
        extra = {k: v for k, v in item.items() if k not in ("name", "resource")}
        agents.append(Agent(name=name, resource=resource, extra=extra))
    return agents


def parse_state(
    state: dict[str, Any], ephemeral: set[str]
) -> tuple[list[Resource], list[Agent]]:
    """Resources and agents from ``terraform show -json`` of the state.

    Args:
        state: ``terraform show -json`` (no plan file) parsed.
        ephemeral: addresses from :func:`ephemeral_addresses`.

    Raises:
        ResourceError: the JSON or the ``burrow_agents`` output is malformed.
    """
    values = state.get("values") or {}
    if not isinstance(values, dict):
        raise ResourceError("state JSON: values is not an object")
    outputs = values.get("outputs") or {}
    if not isinstance(outputs, dict):
        raise ResourceError("state JSON: outputs is not an object")
    agents = parse_agents(outputs)
    extra_ephemeral = outputs.get(EPHEMERAL_OUTPUT, {})
    marked = set(ephemeral)
    if isinstance(extra_ephemeral, dict) and isinstance(extra_ephemeral.get("value"), list):
        marked.update(str(a) for a in extra_ephemeral["value"])
    running = {a.resource for a in agents if a.resource}
    running |= {_strip_index(a) for a in running}
    resources: list[Resource] = []
    root = values.get("root_module") or {}
    for res in _walk_modules(root if isinstance(root, dict) else {}):
        if res.get("mode") != "managed":
            continue
        address = str(res.get("address", ""))
        base = _strip_index(address)
        resources.append(
            Resource(
                address=address,
                type=str(res.get("type", "")),
                name=str(res.get("name", "")),
                computational=address in running or base in running,
                ephemeral=address in marked or base in marked,
            )
        )
    return resources, agents
