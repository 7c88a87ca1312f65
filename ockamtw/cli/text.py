"""
The forms a TCP address may be typed in on the command line.  A leaf of
L{ockamtw.cli}: the command modules import it, it imports none of them.
"""

from __future__ import annotations

from ..endpoints import split_hostport
from ..errors import OckamError
from ..routing import MultiAddr
from .nodes import CLIError


#: The forms a TCP address may be given in, for messages.
HOSTPORT_FORMS = "PORT, HOST:PORT or /ip4/HOST/tcp/PORT"


def hostport(text: str, what: str) -> str:
    """
    C{HOST:PORT} from what a user typed or the command line printed: a
    port (on 127.0.0.1), C{HOST:PORT}, C{[V6]:PORT}, or a MultiAddr such as
    C{/ip4/127.0.0.1/tcp/7000} (what C{node show} prints as "Verbose").
    """
    t = text.strip()
    if t.isascii() and t.isdigit():
        if int(t) > 65535:
            raise CLIError(f"{what}: port {t} is above 65535")
        return f"127.0.0.1:{int(t)}"
    if t.startswith("/"):
        try:
            hops = MultiAddr.parse(t).hops
        except OckamError as e:
            raise CLIError(f"{what}: {e}") from None
        if len(hops) != 1 or hops[0].kind != "tcp":
            raise CLIError(f"{what}: expected {HOSTPORT_FORMS}, got {text!r}")
        host, port = hops[0].host, hops[0].port
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        hp = split_hostport(t)
    except OckamError as e:
        raise CLIError(f"{what}: {e}") from None
    if hp is None:
        raise CLIError(f"{what}: expected {HOSTPORT_FORMS}, got {text!r}")
    return t
