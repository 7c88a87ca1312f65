"""
The command line's client of a node's control API: one blocking HTTP/1.1
request over the node's UNIX socket per call, written with the standard
library alone.

A command that only asks a node something (C{node list}, C{tcp-inlet
list}, C{relay create}, ...) runs without Twisted's reactor (see
L{ockamtw.cli.main}), and so without importing Twisted, treq, TLS or
cryptography: those imports alone took longer than the whole command may.
L{ockamtw.cli.client.ControlClient} is the same client for a Twisted
program (the control API's tests call a node served in their own reactor);
both say the same things in the same words, from here.

A call waits at most its timeout in all (connect, send and the whole
answer), and Ctrl-C ends the wait at once (L{KeyboardInterrupt}, as every
other wait of the command line outside the reactor, see
L{ockamtw.cli.nodes.interruptible}).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Callable, Optional, Sequence, Tuple, Union
from urllib.parse import quote

from .errors import CLIError
from .nodes import interruptible, pressed

#: How long a call may take beyond the time the operation itself is given
#: (a node that is stopped with SIGSTOP, or stuck, must not hang the command).
CALL_TIMEOUT = 15.0


def path_of(path: Union[str, Sequence[str]]) -> str:
    """
    The request path of an endpoint: C{"node"} or C{("outlets", KEY)}, each
    segment quoted whole, so a key such as C{/service/outlet} stays one
    segment.
    """
    segments = path.strip("/").split("/") if isinstance(path, str) else list(path)
    return "/" + "/".join(quote(s, safe="") for s in segments)


def url_of(path: Union[str, Sequence[str]]) -> str:
    """
    The URL of an endpoint (see L{path_of}) on the node's socket.
    """
    return "http://node" + path_of(path)


# --- what a call says when it fails ----------------------------------------------------------


def not_running(name: str) -> str:
    return f"node {name} is not running (start it with: ockam node start {name})"


def no_answer_within(name: str, limit: float) -> CLIError:
    return CLIError(f"node {name} did not answer within {limit:g} s (see: ockam node logs {name})")


def closed_without_answer(name: str) -> CLIError:
    return CLIError(f"node {name} closed the connection without answering (see: ockam node show {name})")


def decode_answer(name: str, code: int, raw: bytes):
    """
    The decoded JSON of an answer with status C{code}, or L{CLIError}: the
    node's one-line reason (C{status}: the HTTP status, e.g. 404 when the
    node has no such thing).
    """
    try:
        result = json.loads(raw)
    except ValueError:
        raise CLIError(f"node {name} answered something that is not JSON") from None
    if code != 200:
        message = result.get("error") if isinstance(result, dict) else None
        error = CLIError(message or f"node {name} answered HTTP {code}")
        error.status = code  # e.g. 404: the node has no such thing
        raise error
    return result


# --- HTTP/1.1, as much as a node's answer needs ------------------------------------------------


def request_bytes(method: str, path: Union[str, Sequence[str]], data: Optional[bytes]) -> bytes:
    """
    One request, asking the node to close the connection after answering.
    """
    lines = [
        f"{method} {path_of(path)} HTTP/1.1",
        "Host: node",
        "Connection: close",
        "Content-Type: application/json",
    ]
    if data is not None:
        lines.append(f"Content-Length: {len(data)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (data or b"")


class IncompleteAnswer(ValueError):
    """
    The bytes read are not a whole HTTP answer.
    """


def parse_answer(raw: bytes) -> Tuple[int, bytes]:
    """
    The status and the body of an HTTP/1.x answer read to the end of the
    connection: a body of C{Content-Length} bytes, in chunks
    (C{Transfer-Encoding: chunked}, as Twisted sends a body written in
    parts), or up to the end.

    @raise IncompleteAnswer: for anything short of a whole answer.
    """
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise IncompleteAnswer("no end of headers")
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise IncompleteAnswer(f"not an HTTP status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise IncompleteAnswer(f"not a header: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return int(status[1]), _dechunk(rest)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit() or len(rest) < int(length):
            raise IncompleteAnswer("body shorter than its Content-Length")
        return int(status[1]), rest[: int(length)]
    return int(status[1]), rest


def _dechunk(data: bytes) -> bytes:
    body = []
    at = 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            raise IncompleteAnswer("chunk size missing")
        size_text = data[at:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise IncompleteAnswer(f"not a chunk size: {size_text[:20]!r}") from None
        if size == 0:
            return b"".join(body)
        start = end + 2
        if len(data) < start + size + 2 or data[start + size : start + size + 2] != b"\r\n":
            raise IncompleteAnswer("chunk cut short")
        body.append(data[start : start + size])
        at = start + size + 2


# --- the client ------------------------------------------------------------------------------------------


class NodeClient:
    """
    What both clients of a node's control API share: the node's name, its
    socket, and the one line said when the socket cannot be reached.

    @param unreachable: called when the socket cannot be reached; returns
        the one-line reason (by default: the node is not running).
    """

    def __init__(self, name: str, socket_path: str, unreachable: Optional[Callable[[], str]] = None) -> None:
        self.name = name
        self.socket_path = socket_path
        self._unreachable = unreachable

    def _not_reachable(self) -> str:
        if self._unreachable is not None:
            return self._unreachable()
        return not_running(self.name)

    @staticmethod
    def _request(body, timeout: Optional[float]) -> Tuple[Optional[bytes], float]:
        """
        The body of a call as bytes (or C{None}) and its time limit
        (L{CALL_TIMEOUT} by default).
        """
        data = json.dumps(body).encode() if body is not None else None
        return data, CALL_TIMEOUT if timeout is None else timeout


class BlockingControlClient(NodeClient):
    """
    Calls one node's control API, blocking; every call returns the decoded
    JSON or raises L{CLIError} with the node's one-line reason.

    L{call} is a coroutine that never waits on anything but its socket, so
    that a command awaits it whether or not a reactor runs (in a reactor,
    the reactor waits with it, as a command line can afford).
    """

    async def call(self, method: str, path: Union[str, Sequence[str]], body=None, timeout: Optional[float] = None):
        """
        C{method} on C{path} (a string, or segments quoted one by one); the
        call fails after C{timeout} seconds (L{CALL_TIMEOUT} by default)
        with one line saying the node did not answer.
        """
        data, limit = self._request(body, timeout)
        code, raw = self._exchange(request_bytes(method, path, data), limit)
        return decode_answer(self.name, code, raw)

    def _exchange(self, request: bytes, limit: float) -> Tuple[int, bytes]:
        deadline = time.monotonic() + limit

        def left() -> float:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            return remaining

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with interruptible():
                if pressed():  # Ctrl-C came before this wait: end it now
                    raise KeyboardInterrupt
                try:
                    sock.settimeout(left())
                    sock.connect(self.socket_path)
                except socket.timeout:
                    raise no_answer_within(self.name, limit) from None
                except OSError as e:
                    raise CLIError(self._not_reachable()) from e
                received = []
                try:
                    sock.settimeout(left())
                    sock.sendall(request)
                    while True:
                        sock.settimeout(left())
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        received.append(chunk)
                except socket.timeout:
                    raise no_answer_within(self.name, limit) from None
                except OSError:
                    # Reset, or a broken pipe while sending: the node went away.
                    raise closed_without_answer(self.name) from None
        finally:
            sock.close()
        try:
            return parse_answer(b"".join(received))
        except IncompleteAnswer:
            raise closed_without_answer(self.name) from None

    async def close(self) -> None:
        """
        Nothing to close: each call closes its connection.
        """
