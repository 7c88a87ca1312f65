"""
Headless Chromium driven as a user would drive it, for tests: the Chrome
DevTools Protocol over C{--remote-debugging-pipe} (Chromium reads
NUL-terminated JSON commands on its descriptor 3 and writes its answers on
4), so a test can type into a page, click, and read what the page shows
after its script ran.  Only the browser's own pipe: no port is opened.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Optional

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol

from .helpers import deadline


def chromium() -> str:
    """
    The path of a Chromium (or Chrome) executable, or C{""}.
    """
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return ""


class DevToolsError(Exception):
    """
    The browser answered a command with an error.
    """


class _Pipe(ProcessProtocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.waiting: Dict[int, Deferred] = {}
        self.ended: Deferred = Deferred()
        self.output = b""

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != 4:
            self.output = (self.output + data)[-4000:]
            return
        self.buffer += data
        while b"\0" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\0", 1)
            message = json.loads(raw)
            d = self.waiting.pop(message.get("id"), None)
            if d is None:
                continue  # an event
            if "error" in message:
                d.errback(DevToolsError(json.dumps(message["error"])))
            else:
                d.callback(message.get("result", {}))

    def processEnded(self, reason) -> None:
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.errback(DevToolsError(f"the browser ended: {self.output.decode(errors='replace')[-1000:]}"))
        self.ended.callback(None)


class Browser:
    """
    One headless Chromium with a profile of its own, closed at the test's
    cleanup.
    """

    def __init__(self, testcase, executable: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="ockchrome-")
        testcase.addCleanup(shutil.rmtree, self.profile, True)
        self._pipe = _Pipe()
        self._ids = 0
        argv = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", f"--user-data-dir={self.profile}",
                "--remote-debugging-pipe", "--window-size=1280,1600", "about:blank"]
        env = dict(os.environ, HOME=self.profile)
        self._process = reactor.spawnProcess(self._pipe, executable, argv, env=env,
                                             childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        testcase.addCleanup(self.close)

    def call(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None) -> Deferred:
        """
        Send one command; a Deferred of its result.
        """
        self._ids += 1
        message: Dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        d = self._pipe.waiting[self._ids] = Deferred()
        self._process.writeToChild(3, json.dumps(message).encode() + b"\0")
        return deadline(d, 30, f"the browser's answer to {method}")

    async def open(self, url: str) -> "Page":
        """
        A new tab showing C{url}.
        """
        target = (await self.call("Target.createTarget", {"url": url}))["targetId"]
        session = (await self.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        return Page(self, session)

    async def close(self) -> None:
        if self._pipe.ended.called:
            return
        try:
            await self.call("Browser.close")
        except Exception:
            pass
        if not self._pipe.ended.called:
            try:
                self._process.signalProcess("KILL")
            except Exception:
                pass
        await deadline(self._pipe.ended, 30, "the browser ended")


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: Optional[Dict[str, Any]] = None) -> Deferred:
        return self.browser.call(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        """
        The value of a JavaScript expression in the page (awaited when it
        is a promise).
        """
        result = await self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                      "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(json.dumps(result["exceptionDetails"])[:1000])
        return result["result"].get("value")

    async def wait_for(self, expression: str, seconds: float, what: str) -> Any:
        """
        Evaluate C{expression} until it is true (every 50 ms, at most
        C{seconds}; an exception, as while the page is still loading,
        counts as false); returns its value.
        """
        end = reactor.seconds() + seconds
        while True:
            last = None
            try:
                value = await self.evaluate(expression)
            except DevToolsError as e:
                value, last = None, e
            if value:
                return value
            if reactor.seconds() >= end:
                raise AssertionError(f"{what}: not within {seconds:g} s" + (f" ({last})" if last else ""))
            await task.deferLater(reactor, 0.05, lambda: None)

    async def type_text(self, selector: str, text: str) -> None:
        """
        Focus the element and type C{text} into it, as keystrokes would.
        """
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.call("Input.insertText", {"text": text})

    async def click(self, selector: str) -> None:
        """
        Click the element, with the mouse, at its centre.
        """
        box = await self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2, r.width * r.height]; })()"
        )
        x, y, area = box
        if not area:
            raise AssertionError(f"{selector} is not shown: it cannot be clicked")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                                         "clickCount": 1})
