"""Headless Chromium (Debian's) driven over the Chrome DevTools Protocol, for pages that need
more than a DOM dump: type, click, pick a file for an <input type=file>, throttle the network,
read state back. No driver library: chromium's own --remote-debugging-port and a websocket."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from eventually import Fatal, eventually
from flame.common.ports import free_port


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chrome:
    def __init__(self, profile: Path, extra_args: tuple[str, ...] = ()) -> None:
        exe = chromium()
        assert exe is not None
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
             f"--remote-debugging-port={self.port}", f"--user-data-dir={profile}",
             "--window-size=1400,1600", *extra_args, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

        def page_target() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise Fatal("chromium exited")
            url = f"http://127.0.0.1:{self.port}/json/list"
            targets = httpx.get(url, timeout=2, trust_env=False).json()
            return next((t for t in targets if t.get("type") == "page"), None)

        page = eventually(page_target, every=0.1, what="chromium's debugging port and page")
        assert page is not None  # eventually returns a truthy answer
        self._connection = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws = self._connection.__enter__()
        self.next_id = 0
        self.console: list[str] = []
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mine = self.next_id
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in args)
                )
            elif msg.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(msg["params"]["exceptionDetails"]))
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete'", 30)

    def eval(self, expression: str) -> Any:
        r = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0, every: float = 0.05) -> Any:
        def value() -> Any:
            try:
                return self.eval(expression)
            except RuntimeError as exc:  # the page threw: waiting longer will not help
                raise Fatal(str(exc)) from exc

        return eventually(value, timeout=timeout, every=every,
                          what=lambda: f"{expression}; console: {self.console[-10:]}")  # fmt: skip

    def click(self, selector: str) -> None:
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def type(self, selector: str, value: str) -> None:
        self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
                  f"e.value = {json.dumps(value)}; e.dispatchEvent(new Event('input')); }})()")  # fmt: skip

    def set_files(self, selector: str, *paths: Path) -> None:
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])

    def throttle_upload(self, bytes_per_s: float) -> None:
        self.send("Network.enable")
        self.send("Network.emulateNetworkConditions", offline=False, latency=0,
                  downloadThroughput=-1, uploadThroughput=bytes_per_s)  # fmt: skip

    def screenshot(self, out: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
