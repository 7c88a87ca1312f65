"""
L{ockamtw.orchestrator.client.OrchestratorClient} with C{treq.testing.StubTreq}
(no sockets): what it sends (method, path with each segment quoted, the
bearer token, JSON), what it makes of answers (JSON, the server's errors in
one line, answers that are not JSON), a server that cannot be reached or
does not answer in time, and the enrollment proof.
"""

from __future__ import annotations

import json

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from ockamtw.orchestrator import client as oc
from ockamtw.orchestrator.client import OrchestratorClient, OrchestratorError
from ockamtw.secure.identity import LocalIdentity, import_identity

URL = "http://orchestrator.test:6252"
TOKEN = "otw_" + "t" * 43


class Recorder(Resource):
    """
    Answers every request from C{answers} (path -> (status, body bytes)),
    recording what came.
    """

    isLeaf = True

    def __init__(self, answers=None) -> None:
        Resource.__init__(self)
        self.answers = answers or {}
        self.seen = []

    def render(self, request):
        body = request.content.read()
        self.seen.append({
            "method": request.method.decode(),
            "path": request.uri.decode(),
            "authorization": (request.getHeader(b"authorization") or b"").decode(),
            "content-type": (request.getHeader(b"content-type") or b"").decode(),
            "body": json.loads(body) if body else None,
        })
        status, payload = self.answers.get(request.path.decode(), (200, b"{}"))
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return payload


def result_of(d: Deferred):
    results = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


class ClientTests(SynchronousTestCase):
    def client(self, resource, token=TOKEN) -> OrchestratorClient:
        self.stub = StubTreq(resource)
        self.clock = Clock()
        return OrchestratorClient(self.stub, URL, token, clock=self.clock)

    def call(self, coroutine):
        d = Deferred.fromCoroutine(coroutine)
        self.stub.flush()
        result = result_of(d)
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def test_request_shape(self):
        """
        Each call sends its method and path (segments quoted whole), the
        bearer token, and its body as JSON.
        """
        r = Recorder({"/v0/projects/a%2Fb%20c/members/P1": (200, b'{"revoked": true}')})
        c = self.client(r)
        self.assertEqual(self.call(c.member_revoke("a/b c", "P1")), {"revoked": True})
        self.call(c.project_create("space 1", "p1"))
        self.call(c.token_create("laptop", 60))
        seen = r.seen
        self.assertEqual(seen[0]["method"], "DELETE")
        self.assertEqual(seen[0]["path"], "/v0/projects/a%2Fb%20c/members/P1")
        self.assertEqual(seen[0]["authorization"], f"Bearer {TOKEN}")
        self.assertEqual(seen[1]["path"], "/v0/spaces/space%201/projects")
        self.assertEqual(seen[1]["body"], {"name": "p1", "services": []})
        self.assertEqual(seen[1]["content-type"], "application/json")
        self.assertEqual(seen[2]["body"], {"label": "laptop", "expires_in": 60})

    def test_every_endpoint(self):
        """
        The API's endpoints, as the server routes them.
        """
        r = Recorder()
        c = self.client(r)
        calls = [
            (c.spaces(), "GET", "/v0/spaces"),
            (c.space_create("s", ["u"]), "POST", "/v0/spaces"),
            (c.space_show("s"), "GET", "/v0/spaces/s"),
            (c.space_delete("s"), "DELETE", "/v0/spaces/s"),
            (c.projects(), "GET", "/v0/projects"),
            (c.project_show("p"), "GET", "/v0/projects/p"),
            (c.project_information("p"), "GET", "/v0/projects/p/information"),
            (c.project_delete("p"), "DELETE", "/v0/projects/p"),
            (c.members("p"), "GET", "/v0/projects/p/members"),
            (c.member_add("p", "P1", {"role": "member"}), "POST", "/v0/projects/p/members"),
            (c.relays("p"), "GET", "/v0/projects/p/relays"),
        ]
        for coroutine, _, _ in calls:
            self.call(coroutine)
        self.assertEqual([(s["method"], s["path"]) for s in r.seen], [(m, p) for _, m, p in calls])
        self.assertEqual(r.seen[1]["body"], {"name": "s", "users": ["u"]})
        self.assertEqual(r.seen[9]["body"], {"identifier": "P1", "attributes": {"role": "member"}})

    def test_health_needs_no_token(self):
        r = Recorder({"/v0/health": (200, b'{"status": "ok"}')})
        c = self.client(r)
        self.assertEqual(self.call(c.health()), {"status": "ok"})
        self.assertEqual(r.seen[0]["authorization"], "")

    def test_server_error_in_one_line(self):
        """
        An answer other than 200 is the server's message (one line), its
        status and its code.
        """
        body = json.dumps({"error": {"code": "not_found", "message": "no project\n'x'"}}).encode()
        c = self.client(Recorder({"/v0/projects/x": (404, body)}))
        with self.assertRaises(OrchestratorError) as e:
            self.call(c.project_show("x"))
        self.assertEqual((e.exception.status, e.exception.code), (404, "not_found"))
        self.assertEqual(str(e.exception), "no project 'x'")

    def test_not_json(self):
        c = self.client(Recorder({"/v0/projects": (200, b"<html>hello</html>")}))
        with self.assertRaises(OrchestratorError) as e:
            self.call(c.projects())
        self.assertEqual(
            str(e.exception),
            f"the orchestrator at {URL} answered HTTP 200 with something that is not JSON (is it an orchestrator?)",
        )
        c = self.client(Recorder({"/v0/projects": (502, b'"bad gateway"')}))
        with self.assertRaises(OrchestratorError) as e:
            self.call(c.projects())
        self.assertEqual(str(e.exception), f"the orchestrator at {URL} answered HTTP 502")

    def test_unreachable(self):
        """
        A refused connection is said in the OS's words, with the URL.
        """

        class Refusing:
            def request(self, *args, **kw):
                from twisted.internet.defer import fail

                return fail(ConnectionRefusedError("Connection refused"))

        c = OrchestratorClient(Refusing(), URL, TOKEN, clock=Clock())
        d = Deferred.fromCoroutine(c.projects())
        f = result_of(d)
        self.assertIsInstance(f.value, OrchestratorError)
        self.assertEqual(str(f.value), f"cannot reach the orchestrator at {URL}: Connection refused")

    def test_tls_failure(self):
        """
        A certificate this machine does not trust, or not for the host
        name, is said as such (it used to be "closed the connection
        without answering").
        """
        from OpenSSL.SSL import Error as SSLError
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseNeverReceived

        class Untrusted:
            def __init__(self, error):
                self.error = error

            def request(self, *args, **kw):
                from twisted.internet.defer import fail

                return fail(ResponseNeverReceived([Failure(self.error)]))

        class VerificationError(Exception):
            pass

        for error, text in (
            (SSLError([("SSL routines", "", "certificate verify failed")]),
             "certificate verify failed (to trust its certificate: SSL_CERT_FILE=cert.pem)"),
            (VerificationError("DNSMismatch"), "its certificate is not for this host name (use the name or address it is for)"),
        ):
            c = OrchestratorClient(Untrusted(error), URL, TOKEN, clock=Clock())
            f = result_of(Deferred.fromCoroutine(c.projects()))
            self.assertIsInstance(f.value, OrchestratorError)
            self.assertEqual(str(f.value), f"TLS with the orchestrator at {URL} failed: {text}")
        c = OrchestratorClient(Untrusted(ValueError("x")), URL, TOKEN, clock=Clock())
        f = result_of(Deferred.fromCoroutine(c.projects()))
        self.assertEqual(str(f.value), f"the orchestrator at {URL} closed the connection without answering")

    def test_timeout(self):
        """
        A server that does not answer: after the timeout, one line, and the
        request is cancelled.
        """
        pending = []

        class Silent:
            def request(self, *args, **kw):
                d = Deferred(lambda d: pending.append("cancelled"))
                return d

        clock = Clock()
        c = OrchestratorClient(Silent(), URL, TOKEN, clock=clock)
        d = Deferred.fromCoroutine(c.projects())
        clock.advance(oc.TIMEOUT - 0.1)
        self.assertNoResult(d)
        clock.advance(0.2)
        f = result_of(d)
        self.assertEqual(str(f.value), f"the orchestrator at {URL} did not answer within 30 s")
        self.assertEqual(pending, ["cancelled"])
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_cancel(self):
        """
        Cancelling a call (Ctrl-C) is a cancellation, not an error of the
        server.
        """
        from twisted.internet.defer import CancelledError

        class Silent:
            def request(self, *args, **kw):
                return Deferred()

        clock = Clock()
        c = OrchestratorClient(Silent(), URL, TOKEN, clock=clock)
        d = Deferred.fromCoroutine(c.projects())
        d.cancel()
        f = result_of(d)
        self.assertIsInstance(f.value, CancelledError)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_enroll_proves_the_identity(self):
        """
        Enrollment takes a challenge, signs the context and the challenge's
        bytes, and posts the export, the challenge and the signature.
        """
        from ockamtw.orchestrator.service import ENROLL_CONTEXT

        self.assertEqual(oc.ENROLL_CONTEXT, ENROLL_CONTEXT)
        challenge = "ab" * 32
        r = Recorder({
            "/v0/enroll/challenge": (200, json.dumps({"challenge": challenge}).encode()),
            "/v0/enroll": (200, b'{"space": {"id": "s"}, "project": {"id": "p"}}'),
        })
        c = self.client(r)
        identity = LocalIdentity.create()
        self.assertEqual(self.call(c.enroll(identity)), {"space": {"id": "s"}, "project": {"id": "p"}})
        post = r.seen[1]
        self.assertEqual((post["method"], post["path"]), ("POST", "/v0/enroll"))
        self.assertEqual(post["body"]["challenge"], challenge)
        public = import_identity(bytes.fromhex(post["body"]["identity"]))
        self.assertEqual(public.identifier, identity.identifier)
        public.verify(ENROLL_CONTEXT + bytes.fromhex(challenge), bytes.fromhex(post["body"]["signature"]))

    def test_bad_challenge(self):
        c = self.client(Recorder({"/v0/enroll/challenge": (200, b'{"challenge": "zz"}')}))
        with self.assertRaises(OrchestratorError) as e:
            self.call(c.enroll(LocalIdentity.create()))
        self.assertIn("challenge that is not hex", str(e.exception))

    def test_http_client_pool_is_not_persistent(self):
        from twisted.internet.testing import MemoryReactorClock

        http, pool = oc.http_client(MemoryReactorClock())
        self.assertFalse(pool.persistent)
        self.successResultOf(pool.closeCachedConnections())
