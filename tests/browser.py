"""
Headless Chromium for tests, driven through the DevTools protocol from
Twisted (an Autobahn WebSocket client, no other driver).

    browser = await browser.launch(self)       # self: the TestCase (cleanup)
    page = await browser.open("http://127.0.0.1:port/LiveApp/play.html?...")
    value = await page.evaluate("document.title")
    await page.wait_for("window.tokengateState.status === 'playing'", timeout=30)
    png = await page.screenshot("shot.png")
    await browser.close()                      # also run by the cleanup

Every step is bounded in time; C{close} always ends the process (Browser.close,
then SIGKILL) and removes its profile directory.  What the page logs
(console, exceptions, browser log) is collected in C{page.console}, the
URLs it requests in C{page.requests}; both are added to timeout messages.

A missing chromium skips the test (fails in CI), see L{tests.helpers.require}.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shutil
import signal
import tempfile
from typing import Any, Callable, Optional, Sequence

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from .helpers import require

#: The flags this machine's Chromium needs (closed network, root, no GPU).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--password-store=basic",
    "--use-mock-keychain",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=960,540",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)

_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")

#: Browser processes still running, killed at interpreter exit whatever happened.
_running: dict[int, Any] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_running):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class BrowserError(Exception):
    pass


class JSError(BrowserError):
    """
    The evaluated script threw (or its promise rejected).
    """


class CDPError(BrowserError):
    """
    A DevTools command answered with an error.
    """


async def bounded(d: Any, timeout: float, what: str) -> Any:
    """
    Wait for C{d} (a Deferred or coroutine) at most C{timeout} seconds.
    """
    if not isinstance(d, Deferred):
        d = defer.ensureDeferred(d)
    d.addTimeout(timeout, reactor)
    try:
        return await d
    except defer.TimeoutError:
        raise BrowserError("timed out after {}s: {}".format(timeout, what)) from None


# -- the process ------------------------------------------------------------------


class _ChromiumProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.listening: Deferred = Deferred()
        self.ended: Deferred = Deferred()
        self.stderr = bytearray()
        self.pid: Optional[int] = None
        self.exited = False

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        _running[self.pid] = self

    def outReceived(self, data: bytes) -> None:
        self.errReceived(data)

    def errReceived(self, data: bytes) -> None:
        if len(self.stderr) < (1 << 20):
            self.stderr += data
        if not self.listening.called:
            m = _LISTENING.search(self.stderr)
            if m:
                self.listening.callback(m.group(1).decode("ascii"))

    def processEnded(self, reason: Any) -> None:
        self.exited = True
        _running.pop(self.pid, None)
        if not self.listening.called:
            self.listening.errback(BrowserError(
                "chromium exited before DevTools listened:\n" + self.stderrText()))
        self.ended.callback(None)

    def stderrText(self, tail: int = 4000) -> str:
        return bytes(self.stderr[-tail:]).decode("utf-8", "replace")

    def kill(self) -> None:
        if not self.exited:
            try:
                self.transport.signalProcess("KILL")
            except Exception:
                pass


# -- the DevTools connection -------------------------------------------------------


class _CDPProtocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.connection._opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.connection._received(json.loads(payload))

    def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
        self.factory.connection._lost(reason or "closed")


class _CDPFactory(WebSocketClientFactory):
    protocol = _CDPProtocol
    connection: "_CDPConnection"

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.connection._lost(reason.getErrorMessage())


class _CDPConnection:
    """
    One WebSocket to the browser target; pages are flat sessions on it.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.proto: Optional[_CDPProtocol] = None
        self.opened: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self._next = 0
        self._pending: dict[int, tuple[Deferred, str]] = {}
        self.listeners: list[Callable[[dict], None]] = []

    def connect(self) -> Deferred:
        factory = _CDPFactory(self.url)
        factory.connection = self
        factory.setProtocolOptions(maxFramePayloadSize=0, maxMessagePayloadSize=0,
                                   openHandshakeTimeout=10, closeHandshakeTimeout=2)
        self.connector = connectWS(factory, timeout=10)
        return self.opened

    def _opened(self, proto: _CDPProtocol) -> None:
        self.proto = proto
        if not self.opened.called:
            self.opened.callback(self)

    def _lost(self, reason: Any) -> None:
        self.proto = None
        if not self.opened.called:
            self.opened.errback(BrowserError("DevTools WebSocket failed: {}".format(reason)))
        pending, self._pending = self._pending, {}
        for d, method in pending.values():
            d.errback(BrowserError("DevTools connection lost during {}".format(method)))
        if not self.lost.called:
            self.lost.callback(None)

    def _received(self, msg: dict) -> None:
        if "id" in msg:
            entry = self._pending.pop(msg["id"], None)
            if entry is None:
                return
            d, method = entry
            if "error" in msg:
                d.errback(CDPError("{}: {}".format(method, msg["error"].get("message"))))
            else:
                d.callback(msg.get("result", {}))
            return
        for listener in list(self.listeners):
            listener(msg)

    async def send(self, method: str, params: Optional[dict] = None,
                   session: Optional[str] = None, timeout: float = 30.0) -> dict:
        if self.proto is None:
            raise BrowserError("DevTools connection is closed ({})".format(method))
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        d: Deferred = Deferred()
        self._pending[self._next] = (d, method)
        self.proto.sendMessage(json.dumps(msg).encode("utf-8"), isBinary=False)
        try:
            return await bounded(d, timeout, method)
        finally:
            self._pending.pop(msg["id"], None)

    def close(self) -> None:
        if self.proto is not None:
            try:
                self.proto.dropConnection(abort=True)
            except Exception:
                pass
        else:
            try:
                self.connector.disconnect()
            except Exception:
                pass


# -- pages ---------------------------------------------------------------------------


def _describe(arg: dict) -> str:
    if "value" in arg:
        v = arg["value"]
        return v if isinstance(v, str) else json.dumps(v)
    return str(arg.get("description") or arg.get("unserializableValue") or arg.get("type"))


class Page:
    def __init__(self, browser: "Browser", target_id: str, session: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session = session
        #: Lines the page logged: console calls, uncaught exceptions, browser log.
        self.console: list[str] = []
        #: URLs the page requested, in order.
        self.requests: list[str] = []
        self._waiters: list[tuple[str, Deferred]] = []
        browser._cdp.listeners.append(self._event)

    async def send(self, method: str, params: Optional[dict] = None, timeout: float = 30.0) -> dict:
        return await self.browser._cdp.send(method, params, self.session, timeout)

    def _event(self, msg: dict) -> None:
        if msg.get("sessionId") != self.session:
            return
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            self.console.append("console.{}: {}".format(
                p.get("type"), " ".join(_describe(a) for a in p.get("args", []))))
        elif method == "Runtime.exceptionThrown":
            details = p.get("exceptionDetails", {})
            exc = details.get("exception") or {}
            self.console.append("exception: {}".format(exc.get("description") or details.get("text")))
        elif method == "Log.entryAdded":
            e = p.get("entry", {})
            self.console.append("log.{}: {} {}".format(e.get("level"), e.get("text"), e.get("url", "")))
        elif method == "Network.requestWillBeSent":
            self.requests.append(p.get("request", {}).get("url", ""))
        for name, d in list(self._waiters):
            if name == method and not d.called:
                self._waiters.remove((name, d))
                d.callback(p)

    def _next_event(self, method: str) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append((method, d))
        return d

    def debug(self) -> str:
        """
        What the page logged and requested, for failure messages.
        """
        requests = [u if len(u) <= 160 else u[:150] + "...({} chars)".format(len(u))
                    for u in self.requests if not u.startswith("data:")]
        return "console:\n  {}\nrequests:\n  {}".format(
            "\n  ".join(c[:500] for c in self.console[-40:]) or "(none)",
            "\n  ".join(requests[-40:]) or "(none)")

    async def navigate(self, url: str, timeout: float = 30.0) -> None:
        loaded = self._next_event("Page.loadEventFired")
        result = await self.send("Page.navigate", {"url": url}, timeout)
        if result.get("errorText"):
            raise BrowserError("navigation to {} failed: {}".format(url, result["errorText"]))
        await bounded(loaded, timeout, "load event of " + url)

    async def evaluate(self, js: str, timeout: float = 20.0) -> Any:
        """
        The value of the expression C{js} (JSON-serializable; promises are
        awaited).  Raises L{JSError} if it throws.
        """
        result = await self.send("Runtime.evaluate", {
            "expression": js, "returnByValue": True, "awaitPromise": True,
            "userGesture": True,
        }, timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            exc = details.get("exception") or {}
            raise JSError("{}: {}".format(js[:200], exc.get("description") or details.get("text")))
        return result.get("result", {}).get("value")

    async def wait_for(self, condition: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
        """
        Evaluate C{condition} until it is truthy; return its value.  On
        timeout, raise with its last value and what the page logged.
        """
        deadline = reactor.seconds() + timeout
        last: Any = None
        while True:
            left = deadline - reactor.seconds()
            last = await self.evaluate(condition, timeout=max(1.0, min(10.0, left)))
            if last:
                return last
            if reactor.seconds() >= deadline:
                raise BrowserError("timed out after {}s waiting for {!r} (last value {!r})\n{}".format(
                    timeout, condition, last, self.debug()))
            await deferLater(reactor, interval, lambda: None)

    async def screenshot(self, path: Optional[str] = None, timeout: float = 20.0) -> bytes:
        """
        A PNG of the page's viewport; written to C{path} if given.
        """
        result = await self.send("Page.captureScreenshot", {"format": "png"}, timeout)
        png = base64.b64decode(result["data"])
        if path is not None:
            with open(path, "wb") as f:
                f.write(png)
        return png

    async def close(self) -> None:
        try:
            await self.browser._cdp.send("Target.closeTarget", {"targetId": self.target_id}, timeout=5)
        except BrowserError:
            pass
        if self._event in self.browser._cdp.listeners:
            self.browser._cdp.listeners.remove(self._event)


# -- the browser ---------------------------------------------------------------------


class Browser:
    def __init__(self, proc: _ChromiumProcess, profile: str) -> None:
        self._proc = proc
        self._profile = profile
        self._cdp: Any = None
        self._closing: Optional[Deferred] = None
        self.pages: list[Page] = []

    @property
    def stderr(self) -> str:
        return self._proc.stderrText()

    async def open(self, url: str, timeout: float = 30.0, init_script: str = "") -> Page:
        """
        A new tab that has loaded C{url}; C{init_script} runs in it before
        any of the page's own scripts.
        """
        target = await self._cdp.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
        attached = await self._cdp.send("Target.attachToTarget",
                                        {"targetId": target["targetId"], "flatten": True},
                                        timeout=timeout)
        page = Page(self, target["targetId"], attached["sessionId"])
        self.pages.append(page)
        for domain in ("Runtime", "Page", "Log", "Network"):
            await page.send(domain + ".enable", timeout=timeout)
        if init_script:
            await page.send("Page.addScriptToEvaluateOnNewDocument", {"source": init_script},
                            timeout=timeout)
        await page.navigate(url, timeout)
        return page

    async def close(self) -> None:
        """
        End the browser, whatever state it is in.  Safe to call twice.
        """
        if self._closing is None:
            self._closing = defer.ensureDeferred(self._close())
        await self._closing

    async def _close(self) -> None:
        proc = self._proc
        try:
            if self._cdp is not None and self._cdp.proto is not None and not proc.exited:
                try:
                    await self._cdp.send("Browser.close", timeout=5)
                except BrowserError:
                    pass
            if not proc.exited:
                try:
                    await bounded(_observe(proc.ended), 5, "chromium to exit")
                except BrowserError:
                    proc.kill()
            if not proc.exited:
                await bounded(_observe(proc.ended), 10, "chromium to die after SIGKILL")
        finally:
            proc.kill()
            if self._cdp is not None:
                self._cdp.close()
                if not self._cdp.lost.called and self._cdp.proto is not None:
                    try:
                        await bounded(_observe(self._cdp.lost), 5, "DevTools socket to close")
                    except BrowserError:
                        pass
            shutil.rmtree(self._profile, ignore_errors=True)


def _observe(d: Deferred) -> Deferred:
    """
    A Deferred that fires when C{d} does, without taking over C{d}'s result
    (so that timing it out does not cancel C{d}).
    """
    out: Deferred = Deferred()

    def fire(result: Any) -> Any:
        if not out.called:
            out.callback(None)
        return result

    d.addBoth(fire)
    return out


async def launch(testcase: Any = None, args: Sequence[str] = (), timeout: float = 30.0) -> Browser:
    """
    Start headless Chromium (extra C{args} appended to L{FLAGS}) and connect
    to it.  With a C{testcase}, its cleanup closes the browser.
    """
    chromium = require("chromium")
    profile = tempfile.mkdtemp(prefix="tg-chromium-")
    proc = _ChromiumProcess()
    env = dict(os.environ)
    env.setdefault("HOME", profile)
    argv = [chromium, *FLAGS, "--user-data-dir=" + profile, *args, "about:blank"]
    reactor.spawnProcess(proc, chromium, argv, env=env)
    browser = Browser(proc, profile)
    if testcase is not None:
        testcase.addCleanup(lambda: defer.ensureDeferred(browser.close()))
    try:
        url = await bounded(_observe_value(proc.listening), timeout, "DevTools to listen")
        cdp = _CDPConnection(url)
        browser._cdp = cdp
        await bounded(_observe_value(cdp.connect()), timeout, "DevTools WebSocket at " + url)
    except BaseException:
        await browser.close()
        raise
    return browser


def _observe_value(d: Deferred) -> Deferred:
    """
    Like L{_observe}, but passing on C{d}'s result (or failure).
    """
    out: Deferred = Deferred()

    def fire(result: Any) -> Any:
        if not out.called:
            if isinstance(result, Failure):
                out.errback(result)
            else:
                out.callback(result)
        # The result is out's now (or nobody's, after a time-out).
        return None

    d.addBoth(fire)
    return out
