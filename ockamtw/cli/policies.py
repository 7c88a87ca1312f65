"""
C{ockam policy ...}: the ABAC policies of a node's inlets and outlets,
through its control API.  A leaf of L{ockamtw.cli} that imports nothing of
the projects (the commands run without loading them, see
L{ockamtw.cli.main}).
"""

from __future__ import annotations

from .nodes import CLIError


def _check_action(c) -> None:
    action = getattr(c.args, "action", None)
    if action not in (None, "handle_message"):
        raise CLIError(f"--action: only handle_message is checked by inlets and outlets, not {action!r}")


async def policy_set(c) -> None:
    a = c.args
    _check_action(c)
    name = c.nodes.pick(a.at)
    policy = await c.client(name).call("PUT", ("policies", a.resource), {"expression": a.expression})
    c.out.emit(policy, None)


async def policy_show(c) -> None:
    a = c.args
    _check_action(c)
    name = c.nodes.pick(a.at)
    policy = await c.client(name).call("GET", ("policies", a.resource))
    c.out.emit(policy, policy["expression"])


async def policy_list(c) -> None:
    a = c.args
    name = c.nodes.pick(a.at)
    policies = await c.client(name).call("GET", "policies")
    if a.resource is not None:
        policies = [p for p in policies if p["resource"] == a.resource]
    text = "\n".join(f"{p['resource']}/{p['action']}: {p['expression']}" for p in policies)
    c.out.emit(policies, text or None)


async def policy_delete(c) -> None:
    a = c.args
    _check_action(c)
    name = c.nodes.pick(a.at)
    policy = await c.client(name).call("DELETE", ("policies", a.resource))
    c.out.emit(policy, None)
