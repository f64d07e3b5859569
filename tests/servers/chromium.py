"""Headless Chromium (Debian's package) driven over the DevTools protocol, for the MLflow UI test."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from servers.process import base_env, start_process


class Chromium:
    """Debian's chromium, headless, driven through its DevTools websocket (aiohttp comes with Ray)."""

    FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1400,1000"]

    def __init__(self, tmp_dir: Path):
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            pytest.skip("chromium is not installed (`apt-get install chromium`; .ci/run installs it)")
        profile = tmp_dir / "chromium-profile"
        profile.mkdir(parents=True)
        self.process = start_process([binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     env=base_env(), log_path=tmp_dir / "chromium.log")
        port_file = profile / "DevToolsActivePort"
        self.process.wait_until(lambda: port_file.is_file() and port_file.read_text().strip(), timeout=60,
                                what="chromium")
        port = int(port_file.read_text().split()[0])
        targets = []

        def page_target() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets[:] = [t for t in json.load(r) if t.get("type") == "page"]
            except OSError:
                return False
            return bool(targets)

        self.process.wait_until(page_target, timeout=30, what="chromium page target")
        self.ws_url = targets[0]["webSocketDebuggerUrl"]

    def _run(self, commands: list[tuple[str, dict]]) -> list[dict]:
        import aiohttp

        async def go() -> list[dict]:
            results = []
            async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url, max_msg_size=0) as ws:
                for i, (method, params) in enumerate(commands, start=1):
                    await ws.send_json({"id": i, "method": method, "params": params})
                    while True:
                        message = await ws.receive_json(timeout=60)
                        if message.get("id") == i:
                            if "error" in message:
                                raise RuntimeError(f"{method}: {message['error']}")
                            results.append(message.get("result", {}))
                            break
            return results

        return asyncio.run(go())

    def open(self, url: str) -> None:
        self._run([("Page.navigate", {"url": url})])

    def text(self) -> str:
        result = self._run([("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                                  "returnByValue": True})])[0]
        return result.get("result", {}).get("value", "")

    def wait_for_text(self, *needles: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.text()
            if all(n in text for n in needles):
                return text
            time.sleep(1)
        raise AssertionError(f"page never showed {needles}; it shows:\n{text[-3000:]}")

    def screenshot(self, path: Path) -> Path:
        result = self._run([("Page.captureScreenshot", {"format": "png"})])[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def stop(self) -> None:
        self.process.stop()
