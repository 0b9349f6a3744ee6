"""A headless Debian chromium driven through the DevTools protocol (websocket-client, no webdriver): open a page,
wait for an element, screenshot its region. :func:`find_chromium` installs chromium with apt where the tests run as
root on a Debian-like system and it is missing; otherwise the browser tests skip, saying why. ``python -m
tests.support.browser`` does that install up front (.ci/run, before the suite, so it is not test time)."""
from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _which() -> str | None:
    return next((p for p in map(shutil.which, NAMES) if p), None)


def find_chromium() -> tuple[str | None, str]:
    """``(path, "")`` of a chromium, installing Debian's with apt-get where possible; else ``(None, why)``."""
    found = _which()
    if found:
        return found, ""
    if not shutil.which("apt-get"):
        return None, "no chromium on PATH and no apt-get to install it (install chromium to run this test)"
    if os.geteuid() != 0:
        return None, "no chromium on PATH, and not root to apt-get install it (apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    reason = "apt-get installed no chromium on PATH"
    for attempt in ([install], [["apt-get", "update"], install]):
        try:
            for cmd in attempt:
                subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            why = getattr(e, "stderr", b"") or b""
            reason = f"apt-get install chromium failed: {why.decode(errors='replace').strip()[-300:]}"
            continue
        if _which():
            return _which(), ""
    return None, reason


class Browser:
    """One headless chromium with one page, driven over the DevTools websocket."""

    def __init__(self, executable: str, width: int = 1400, height: int = 1600):
        import websocket

        self.profile = Path(tempfile.mkdtemp(prefix="sportsnet-chromium-"))
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                 f"--window-size={width},{height}", "about:blank"]
        self.process = subprocess.Popen([executable, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium ({executable}) did not open its DevTools port")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self.ids = itertools.count(1)

    def send(self, method: str, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 120.0):
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"waited {timeout:.0f} s for {expression}")

    def screenshot(self, clip: dict | None = None) -> Image.Image:
        params = {"format": "png", "captureBeyondViewport": True}
        if clip is not None:
            params["clip"] = {**clip, "scale": 1}
        data = self.send("Page.captureScreenshot", **params)["data"]
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def region_stats(image: Image.Image) -> tuple[np.ndarray, float]:
    """Mean colour and pixel standard deviation of an image (a blank region has a deviation near 0)."""
    a = np.asarray(image, dtype=np.float64).reshape(-1, 3)
    return a.mean(axis=0), float(a.std(axis=0).mean())


if __name__ == "__main__":
    path, why = find_chromium()
    print(f"chromium: {path}" if path else f"no chromium: {why} (the browser test will skip, saying so)")
