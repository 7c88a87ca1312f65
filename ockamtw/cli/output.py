"""
What the command line prints, and how: Ockam 0.83's layouts (a node's
status block, an identity's change history, ...) and its rules for where
output goes.

Ockam 0.83 prints a command's result in one of three forms: I{plain} for
a person (standard output is a terminal), I{machine} (one bare value, when
standard output is a pipe or a file: C{$(ockam node delete n1)} is C{n1}),
and I{json} (C{--output json}).  C{--quiet} silences what Ockam writes
through its terminal (the lines of C{node delete}, C{vault delete},
C{tcp-inlet delete} ...), never a command's answer.  No colour is ever
printed, so C{--no-color} changes nothing.
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional

from ..status import DOWN, UP

#: ✔︎ as Ockam prints it (U+2714 U+FE0E).
CHECK = "\u2714\ufe0e"


def table(headers: List[str], rows: List[List[str]]) -> str:
    """
    An ASCII table as Ockam's CLI draws it.
    """
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells):
        return "|" + "|".join(f" {str(c):<{w}} " for c, w in zip(cells, widths)) + "|"

    out = [rule, line(headers), rule]
    out += [line(r) for r in rows]
    if rows:
        out.append(rule)
    return "\n".join(out)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Out:
    """
    Prints a command's result as the global options ask.
    """

    def __init__(self, fmt: str = "plain", quiet: bool = False) -> None:
        self.json = fmt == "json"
        self.quiet = quiet

    def emit(self, data, text: Optional[str], machine: Optional[str] = None, compact: bool = False) -> None:
        """
        Print C{data} as JSON (C{--output json}; on one line with
        C{compact}, as Ockam prints its small JSON answers), else C{text}
        (nothing for C{None}: a command that prints nothing on success, as
        in Ockam), or C{machine} instead when given and standard output is
        not a terminal.
        """
        if self.json:
            if compact:
                print(json.dumps(data, separators=(",", ":")))
            else:
                print(json.dumps(data, indent=2, sort_keys=True))
        elif machine is not None and not _isatty(sys.stdout):
            print(machine)
        elif text is not None:
            print(text)

    def shell(self, data, text: str, machine: str) -> None:
        """
        What Ockam writes through its terminal: as L{emit}, but nothing
        with C{--quiet}.
        """
        if not self.quiet:
            self.emit(data, text, machine, compact=True)

    def info(self, text: str) -> None:
        """
        A note for a person on standard error (when it is a terminal, and
        not with C{--quiet} or C{--output json}), as Ockam writes them.
        """
        if self.quiet or self.json or not _isatty(sys.stderr):
            return
        print(text, file=sys.stderr)


def stdout_is_terminal() -> bool:
    return _isatty(sys.stdout)


# --- a node's status, as Ockam 0.83's `node show` prints it ---------------------------------------


def ockam_node_block(info: dict, is_default: bool = False, transports=None, services=None) -> str:
    """
    C{node show} as Ockam 0.83 prints it: a blank line, then the node's
    name (C{(Default)} for the default node), status, its routes (the
    short C{/node/NAME} and the verbose C{/dnsaddr/localhost/tcp/PORT}),
    and for a running node its identity, transports (its listener),
    secure channel listeners, inlets, outlets and services, each address
    as a C{/service/NAME} MultiAddr.

    @param transports: the node's listeners (C{GET /tcp} items whose mode
        is C{Listening}); C{None} for a node that does not answer.
    @param services: the node's services (C{GET /services}); C{None} for a
        node that does not answer.
    """
    up = info.get("status") == UP
    name = info["name"]
    lines = ["", "Node:", f"  Name: {name} (Default)" if is_default else f"  Name: {name}"]
    lines.append(f"  Status: {UP if up else DOWN}")
    lines += ["  Route To Node:", f"    Short: /node/{name}"]
    port = _port_of(info.get("listener"))
    if port is not None:
        lines.append(f"    Verbose: /dnsaddr/localhost/tcp/{port}")
    if not up or transports is None or services is None:
        return "\n".join(lines)
    lines.append(f"  Identity: {info.get('identity') or 'None'}")
    lines.append("  Transports:")
    for t in transports:
        lines += [
            "    Transport:",
            f"      Type: {t['transport_type']}",
            f"      Mode: {t['mode']}",
            f"      Socket: {t['socket_address']}",
            f"      Worker: {t['worker_address']}",
        ]
    lines.append("  Secure Channel Listeners:")
    for address in info.get("secure_channel_listeners") or []:
        lines += ["    Listener:", f"      Address: /service/{address}"]
    lines.append("  Inlets:")
    for i in info.get("inlets") or []:
        lines += ["    Inlet:", f"      Listen Address: {i['listen']}"]
        if i.get("route"):
            lines.append(f"      Route To Outlet: {i['route']}")
    lines.append("  Outlets:")
    for o in info.get("outlets") or []:
        lines += ["    Outlet:", f"      Forward Address: {o['target']}", f"      Address: /service/{o['address']}"]
    lines.append("  Services:")
    for s in services:
        lines += ["    Service:", f"      Type: {s['type']}", f"      Address: /service/{s['address']}"]
    return "\n".join(lines)


def _port_of(listener: Optional[str]) -> Optional[int]:
    if not listener or ":" not in listener:
        return None
    try:
        return int(listener.rsplit(":", 1)[1])
    except ValueError:
        return None


def node_block(info: dict) -> str:
    """
    C{node show --details}: ockamtw's own view of a node (its process,
    listener, project, relays and inlets' status as well).
    """
    from ..endpoints import split_hostport

    listener = info.get("listener") or "-"
    lines = [
        "Node:",
        f"  Name: {info['name']}",
        f"  Status: {info['status']}",
        f"  PID: {info.get('pid') or '-'}",
        "  Route To Node:",
        f"    Short: /node/{info['name']}",
    ]
    hp = split_hostport(listener) if listener != "-" else None
    if hp:
        host, port = hp
        proto = "ip6" if ":" in host else "ip4"
        lines.append(f"    Verbose: /{proto}/{host}/tcp/{port}")
    lines.append(f"  Listener: {listener}")
    if info.get("identity"):
        lines.append(f"  Identity: {info['identity']}")
    if info.get("project"):
        lines.append(f"  Project: {info['project']}")
    if info.get("authority"):
        lines.append(f"  Authority of project: {info['authority']['project_identifier']}")
    services = info.get("services")
    if services is not None:
        lines.append("  Services:")
        lines += [f"    {s}" for s in services] or ["    -"]
    lines.append("  Inlets:")
    lines += [f"    {i['listen']} => {i['route']} ({i['status']})" for i in info.get("inlets", [])] or ["    -"]
    lines.append("  Outlets:")
    lines += [f"    /service/{o['address']} => {o['target']}" for o in info.get("outlets", [])] or ["    -"]
    lines.append("  Relays:")
    lines += [
        f"    /service/{r['alias']} at {r['at']} ({r['status']})" for r in info.get("relays", [])
    ] or ["    -"]
    return "\n".join(lines)


# --- identities ---------------------------------------------------------------------------------------------


def change_history_text(identity) -> str:
    """
    An identity's change history as Ockam 0.83 prints it (C{identity show
    --full}): each change's id, previous change id, key label, public key
    and signatures, with their types as Ockam names them.
    """
    from ..secure.codec import SecretType, SignatureType

    key_types = {SecretType.BUFFER: "Buffer", SecretType.AES: "Aes", SecretType.X25519: "X25519",
                 SecretType.ED25519: "Ed25519", SecretType.NIST_P256: "NistP256"}
    sig_types = {SignatureType.ROOT_SIGN: "RootSign", SignatureType.SELF_SIGN: "SelfSign",
                 SignatureType.PREV_SIGN: "PrevSign"}
    lines = ["Change History:"]
    for i, signed in enumerate(identity.changes):
        data = signed.change.data
        lines += [
            f"  Change[{i}]:",
            f"    identifier: {bytes(signed.change_id).hex()}",
            "    change:",
            f"      prev_change_identifier: {bytes(data.prev_change_id).hex()}",
            f"      label:        {data.label}",
            f"      public_key:   {key_types.get(data.key_stype, str(data.key_stype))} {bytes(data.public_key).hex()}",
            "    signatures:",
        ]
        for n, sig in enumerate(signed.signatures):
            lines.append(f"      [{n}]: {sig_types.get(sig.sig_type, str(sig.sig_type))} {bytes(sig.data).hex()}")
    return "\n".join(lines) + "\n"
