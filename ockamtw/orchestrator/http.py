"""
A small JSON-over-HTTP router on twisted.web: routes are (method, path
pattern) -> handler; handlers return a JSON-able value or a Deferred of
one, or raise L{HttpError}; every answer is JSON, errors included
(C{{"error": {"code", "message"}}}), never a traceback.
"""

from __future__ import annotations

import json
import re
from typing import Callable, Dict, List, Optional, Pattern, Tuple

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

log = Logger(namespace="ockamtw.orchestrator.http")

#: Largest request body accepted (bytes).
MAX_BODY = 64 * 1024


class HttpError(Exception):
    """
    An answer other than 200: C{status}, a machine-readable C{code} and a
    one-line C{message}.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.code = code
        self.message = message


def bad_request(message: str) -> HttpError:
    return HttpError(400, "bad_request", message)


def not_found(message: str) -> HttpError:
    return HttpError(404, "not_found", message)


def conflict(message: str) -> HttpError:
    return HttpError(409, "conflict", message)


class Request:
    """
    What a handler gets: the method, path parameters, the JSON body (a
    dict) and the bearer token, if any.
    """

    def __init__(self, method: str, params: Dict[str, str], body: dict, token: Optional[str], raw) -> None:
        self.method = method
        self.params = params
        self.body = body
        self.token = token
        self.raw = raw

    def need(self, key: str, kind=str):
        value = self.body.get(key)
        if not isinstance(value, kind) or (kind is str and value == ""):
            raise bad_request(f"missing or bad {key!r}")
        return value


Handler = Callable[[Request], object]


class Router(resource.Resource):
    """
    The twisted.web face of a route table.  C{authenticate(request)} (a
    Deferred or value) runs before every handler of a route that needs it
    and raises L{HttpError} (401/403) to refuse.
    """

    isLeaf = True

    def __init__(self, authenticate: Optional[Callable[[Request], object]] = None,
                 translate: Optional[Callable[[BaseException], Optional[HttpError]]] = None) -> None:
        resource.Resource.__init__(self)
        self._routes: List[Tuple[str, Pattern, Handler, bool]] = []
        self._authenticate = authenticate
        #: turns an exception of the layers below into an L{HttpError} (or
        #: C{None}: an internal error)
        self._translate = translate

    def route(self, method: str, pattern: str, handler: Handler, auth: bool = True) -> None:
        """
        Serve C{method} on paths matching C{pattern}, where C{{name}} is a
        path segment passed in C{request.params}.
        """
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern.rstrip("/")) + "/?$"
        self._routes.append((method, re.compile(regex), handler, auth))

    def render(self, request):
        path = request.path.decode("utf-8", "replace")
        method = request.method.decode("ascii", "replace")
        d = maybeDeferred(self._dispatch, request, method, path)
        d.addBoth(lambda result: self._finish(request, result))
        return server.NOT_DONE_YET

    def _dispatch(self, raw, method: str, path: str):
        from urllib.parse import unquote

        matched_path = False
        for route_method, regex, handler, auth in self._routes:
            m = regex.match(path)
            if m is None:
                continue
            matched_path = True
            if route_method != method:
                continue
            params = {k: unquote(v) for k, v in m.groupdict().items()}
            body = self._body(raw)
            token = None
            header = raw.getHeader(b"authorization")
            if header:
                scheme, _, value = header.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and value.strip():
                    token = value.strip()
            request = Request(method, params, body, token, raw)
            if auth and self._authenticate is not None:
                d = _call(self._authenticate, request)
                return d.addCallback(lambda _: _call(handler, request))
            return _call(handler, request)
        if matched_path:
            raise HttpError(405, "method_not_allowed", f"{method} is not allowed on {path}")
        raise not_found(f"no such endpoint: {method} {path}")

    def _body(self, raw) -> dict:
        content = raw.content.read(MAX_BODY + 1) if raw.content is not None else b""
        if len(content) > MAX_BODY:
            raise HttpError(413, "too_large", f"the request body is over {MAX_BODY} bytes")
        if not content.strip():
            return {}
        try:
            body = json.loads(content, parse_constant=_not_json)
        except ValueError:
            raise bad_request("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise bad_request("the request body must be a JSON object")
        return body

    def _finish(self, request, result) -> None:
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, HttpError) and self._translate is not None:
                error = self._translate(error) or error
            if isinstance(error, HttpError):
                status, payload = error.status, {"error": {"code": error.code, "message": error.message}}
            else:
                log.failure("request failed", result)
                status, payload = 500, {"error": {"code": "internal", "message": "internal error (see the log)"}}
        else:
            status, payload = 200, result
        if request.finished or getattr(request, "channel", None) is None:
            return
        data = json.dumps(payload, indent=None, sort_keys=False).encode() + b"\n"
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(data)
        request.finish()


def _not_json(name: str):
    # NaN, Infinity and -Infinity: Python's json reads them, JSON has none.
    raise ValueError(f"{name} is not JSON")


def _call(f, *args) -> Deferred:
    """
    C{f(*args)} as a Deferred, whether it returns a value, a Deferred or a
    coroutine.
    """
    try:
        result = f(*args)
    except Exception:
        return _failed()
    if hasattr(result, "__await__") and not isinstance(result, Deferred):
        return Deferred.fromCoroutine(result)
    return maybeDeferred(lambda: result)


def _failed() -> Deferred:
    from twisted.internet.defer import fail

    return fail()
