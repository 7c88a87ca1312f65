"""
The Orchestrator's status page (issue #16 part 3), with an Orchestrator
in-process on loopback: its JSON behind the tokens, the page and its
headers, and the page in a real browser (headless Chromium, Debian's
package): it signs in with a token and shows what the API says; a
screenshot is kept (C{orchestrator-status.png} in trial's directory).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from ockamtw import Node
from ockamtw.orchestrator.service import ENROLL_CONTEXT, Orchestrator, Settings
from ockamtw.orchestrator.status import CONTENT_SECURITY_POLICY
from ockamtw.project import codec
from ockamtw.project.projectinfo import ProjectInfo
from ockamtw.secure.identity import LocalIdentity

from .browser_harness import Browser, chromium
from .helpers import async_test, deadline

#: Where the browser test keeps its screenshot (trial's working directory).
SCREENSHOT = "orchestrator-status.png"


class StatusTestCase(TestCase):
    timeout = 120

    async def orchestrator(self):
        """
        An Orchestrator with the administrator enrolled (project
        "default"), a member node with relay n3 at the project, member bob
        (role=web) and a second API token ("ci").
        """
        # refresh=60: no members' reload is in flight when the test stops
        # the Orchestrator (one then fails on the closed store and is logged).
        self.data = tempfile.mkdtemp(prefix="ockstatus-")
        self.addCleanup(shutil.rmtree, self.data, True)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(treq.api.Agent(reactor, pool=pool))
        o = Orchestrator(reactor, Settings(self.data, http="tcp:0:interface=127.0.0.1", project_ports=None, refresh=60))
        o.startService()
        self.addCleanup(o.stopService)
        await deadline(o.ready, 15, "the orchestrator started")
        self.o = o
        with open(os.path.join(self.data, "admin.token")) as f:
            self.token = f.read().strip()

        self.admin = LocalIdentity.create()
        challenge = (await self.api("GET", "/v0/enroll/challenge"))["challenge"]
        signature = self.admin.sign(ENROLL_CONTEXT + bytes.fromhex(challenge))
        enrolled = await self.api("POST", "/v0/enroll", {"identity": self.admin.export().hex(), "challenge": challenge,
                                                          "signature": signature.hex()})
        self.project_id = enrolled["project"]["id"]
        info = ProjectInfo.from_json(json.dumps(await self.api("GET", f"/v0/projects/{self.project_id}/information")))
        n3 = Node(reactor, name="n3", identity=self.admin)
        n3.add_project(info)
        n3.startService()
        self.addCleanup(n3.stopService)
        await deadline(n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE), 15,
                       "the relay at the project")
        self.bob = LocalIdentity.create().identifier
        await self.api("POST", f"/v0/projects/{self.project_id}/members",
                       {"identifier": self.bob, "attributes": {"role": "web"}})
        await self.api("POST", "/v0/tokens", {"label": "ci"})

    async def api(self, method: str, path: str, body=None, token=None, expect=200):
        token = self.token if token is None else token
        headers = {b"authorization": [f"Bearer {token}".encode()]} if token else {}
        response = await self.http.request(method, self.o.url + path, headers=headers,
                                           data=json.dumps(body).encode() if body is not None else None)
        text = await response.content()
        self.assertEqual(response.code, expect, text[:500])
        return json.loads(text)


class ApiTests(StatusTestCase):
    @async_test
    async def test_status_json(self):
        """
        C{GET /v0/status}: the project, its relay (owner, age, last
        registration, up on this instance), members with attributes, the
        tokens (never their secrets), this instance; 401 without a token.
        """
        await self.orchestrator()
        error = await self.api("GET", "/v0/status", token="", expect=401)
        self.assertEqual(error["error"]["code"], "unauthorized")
        s = await self.api("GET", "/v0/status")
        self.assertEqual(s["instance"]["id"], self.o.instance_id)
        [project] = s["projects"]
        self.assertEqual((project["name"], project["id"], project["served_here"]), ("default", self.project_id, True))
        [relay] = project["relays"]
        self.assertEqual((relay["name"], relay["owner"], relay["up"]), ("n3", self.admin.identifier, True))
        self.assertLessEqual(relay["created_at"], s["now"])
        self.assertGreaterEqual(relay["last_registered_at"], relay["created_at"])
        self.assertGreaterEqual(project["connections"], 1)
        members = {m["identifier"]: m["attributes"] for m in project["members"]}
        self.assertEqual(members[self.bob].get("role"), "web")
        self.assertEqual(sorted(t["label"] for t in s["tokens"]), ["bootstrap", "ci"])
        [instance] = s["instances"]
        self.assertEqual((instance["id"], instance["alive"], instance["projects"]), (self.o.instance_id, True, 1))
        self.assertEqual(project["lease"]["owner"], self.o.instance_id)
        self.assertGreater(project["lease"]["until"], s["now"])
        self.assertNotIn(self.token, json.dumps(s))
        relays = await self.api("GET", f"/v0/projects/{self.project_id}/relays")
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [(relay["name"], relay["owner"])])

    @async_test
    async def test_page(self):
        """
        C{GET /status} needs no token and holds no data: the sign-in form
        and the script, under a Content-Security-Policy that allows exactly
        them.
        """
        await self.orchestrator()
        response = await self.http.get(self.o.url + "/status")
        body = (await response.content()).decode()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders(b"content-security-policy"), [CONTENT_SECURITY_POLICY.encode()])
        self.assertIn('id="signin"', body)
        self.assertNotIn(self.admin.identifier, body)
        self.assertNotIn("n3", re.sub(r"<script>.*</script>", "", body, flags=re.S))


class BrowserTests(StatusTestCase):
    """
    The page in headless Chromium: C{--dump-dom} after its script ran.
    """

    def setUp(self):
        self.browser = chromium()
        if not self.browser:
            self.fail("the status page is checked in a real browser: install Chromium (apt-get install chromium)")

    async def dom(self, url: str, screenshot: str = "") -> str:
        profile = tempfile.mkdtemp(prefix="ockchrome-")
        self.addCleanup(shutil.rmtree, profile, True)
        argv = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={profile}",
                "--virtual-time-budget=10000", "--window-size=1280,1600"]
        argv += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
        env = dict(os.environ, HOME=profile)
        out, err, code = await deadline(getProcessOutputAndValue(self.browser, argv + [url], env=env), 90,
                                        "Chromium")
        self.assertEqual(code, 0, err.decode(errors="replace")[-2000:])
        return out.decode("utf-8", "replace")

    @async_test
    async def test_signed_in(self):
        """
        Signed in with the token (in the address's fragment, which the
        server never sees): the page shows the project's relay and its
        owner, the members and their attributes, the tokens, as the API
        says; a screenshot is kept.
        """
        await self.orchestrator()
        s = await self.api("GET", "/v0/status")
        dom = await self.dom(f"{self.o.url}/status#token={self.token}")
        self.assertRegex(dom, r'<form id="signin" hidden', "signed in: the form is hidden")
        section = re.search(r'<section class="project" data-project="default">(.*?)</section>', dom, re.S)
        self.assertIsNotNone(section, dom[-3000:])
        section = section.group(1)
        [project] = s["projects"]
        relay_rows = re.findall(r'<tr data-row="relays">(.*?)</tr>', section, re.S)
        self.assertEqual(len(relay_rows), len(project["relays"]))
        for relay, row in zip(project["relays"], relay_rows):
            self.assertIn(f"<td>{relay['name']}</td>", row)
            self.assertIn(f'data-id="{relay["owner"]}"', row)
            self.assertIn("<td>yes</td>", row)
        member_rows = re.findall(r'<tr data-row="members">(.*?)</tr>', section, re.S)
        self.assertEqual(len(member_rows), len(project["members"]))
        bob = [row for row in member_rows if f'data-id="{self.bob}"' in row]
        self.assertEqual(len(bob), 1)
        self.assertIn("role=web", bob[0])
        [instance_row] = re.findall(r'<tr data-row="instances">(.*?)</tr>', dom, re.S)
        self.assertIn(f"<td>{self.o.instance_id} (this one)</td>", instance_row)
        self.assertIn(f"leased by {self.o.instance_id}", section)
        token_rows = re.findall(r'<tr data-row="tokens">(.*?)</tr>', dom, re.S)
        self.assertEqual(sorted(re.match(r"<td>([^<]*)</td>", row).group(1) for row in token_rows),
                         sorted(t["label"] for t in s["tokens"]))
        self.assertNotIn(self.token, dom)

        path = os.path.abspath(SCREENSHOT)
        await self.dom(f"{self.o.url}/status#token={self.token}", screenshot=path)
        with open(path, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    @async_test
    async def test_refreshes(self):
        """
        The page reads C{/v0/status} again and again: a member added after
        its first reading is shown.
        """
        from ockamtw.orchestrator import status

        await self.orchestrator()
        carol = LocalIdentity.create().identifier
        calls = []
        original = status.snapshot

        async def counting(orchestrator):
            calls.append(1)
            if len(calls) == 2:
                await self.api("POST", f"/v0/projects/{self.project_id}/members",
                               {"identifier": carol, "attributes": {"role": "late"}})
            return await original(orchestrator)

        self.patch(status, "snapshot", counting)
        dom = await self.dom(f"{self.o.url}/status#token={self.token}")
        self.assertGreaterEqual(len(calls), 3)
        self.assertIn(f'data-id="{carol}"', dom)
        self.assertIn("role=late", dom)

    @async_test
    async def test_refused_token(self):
        """
        A wrong token: the sign-in form again, with the API's reason.
        """
        await self.orchestrator()
        dom = await self.dom(f"{self.o.url}/status#token=otw_wrong")
        self.assertNotRegex(dom, r'<form id="signin" hidden')
        self.assertIn("unknown, revoked or expired token", dom)
        self.assertNotIn('data-project="default"', dom)

    @async_test
    async def test_sign_in_and_out_with_the_form(self):
        """
        As a user would, with the mouse and the keyboard: the page opens
        signed out (the form; no Sign out button); the token typed into
        the form and Sign in clicked, it shows the project and its relay,
        and the form, the typed token and the sign-in prompt are gone;
        Sign out clicked, the form is back, nothing is shown, and the
        token is forgotten (a reload stays signed out).
        """
        await self.orchestrator()
        browser = Browser(self, self.browser)
        page = await browser.open(f"{self.o.url}/status")

        def shown(element_id):
            return page.evaluate(f"!document.getElementById('{element_id}').hidden")

        await page.wait_for("document.readyState === 'complete' && !document.getElementById('signin').hidden", 30,
                            "the sign-in form")
        self.assertFalse(await shown("signout"), "a Sign out button while signed out")
        await page.type_text("#token", self.token)
        await page.click("#signin button[type=submit]")
        await page.wait_for("document.querySelector('section.project[data-project=\"default\"]') !== null", 30,
                            "the project shown")
        text = await page.evaluate("document.body.innerText")
        self.assertIn("n3", text)
        self.assertIn(self.admin.identifier[:12], text)
        self.assertFalse(await shown("signin"))
        self.assertTrue(await shown("signout"))
        self.assertEqual(await page.evaluate("document.getElementById('token').value"), "")

        await page.click("#signout")
        await page.wait_for("!document.getElementById('signin').hidden", 10, "the form again")
        self.assertEqual(await page.evaluate("document.getElementById('status').children.length"), 0)
        self.assertIn("Signed out.", await page.evaluate("document.body.innerText"))
        self.assertFalse(await shown("signout"))
        await page.call("Page.reload")
        await page.wait_for("document.readyState === 'complete' && document.getElementById('error').textContent === ''"
                            " && !document.getElementById('signin').hidden", 30, "the page again, signed out")
        self.assertIsNone(await page.evaluate("sessionStorage.getItem('ockamtw-orchestrator-token')"))
