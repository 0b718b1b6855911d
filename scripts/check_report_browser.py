#!/usr/bin/env python3
"""Open an HTML report in headless Chromium and fail on missing images or console errors.

usage: python scripts/check_report_browser.py runs/report/index.html [--screenshot page.png] [--timeout 60]

Chromium (Debian package ``chromium``; ``apt-get install chromium``; or give ``--chromium PATH`` /
``$CHROMIUM``) is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port, no
extra Python package). The page is loaded from its file; after the load event the check collects

- every ``<img>`` that did not decode (``complete`` and ``naturalWidth > 0``), by its ``src``;
- console messages of level error (``console.error``, uncaught exceptions, and the browser's own log
  entries of level error, e.g. ``Failed to load resource`` for any missing file).

Exit status: 0 when the page loads with images that all decode and no error; 1 with the problems listed
on stderr; 2 for bad usage (no such file, no Chromium). ``--screenshot`` also writes a full-page PNG.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IMAGES_JS = """JSON.stringify(Array.from(document.images).map(i => ({src: i.getAttribute('src'),
  ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth})))"""


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, or the first of chromium / chromium-browser /
    google-chrome on PATH; None when there is none."""
    for name in (explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class Browser:
    """A headless Chromium process spoken to over the DevTools pipe (fd 3 in, fd 4 out, NUL-separated JSON)."""

    def __init__(self, executable: str, timeout: float):
        self.timeout, self.next_id, self.events = timeout, 0, []
        self.profile = tempfile.mkdtemp(prefix="ncbench-chromium-")
        self.log = open(Path(self.profile) / "stderr.log", "w+b")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends at fds 3 and 4 (moved high first: they may be 3 or 4)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
             f"--user-data-dir={self.profile}", "--window-size=1400,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log, preexec_fn=fds, close_fds=False)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                self.log.seek(0)
                raise RuntimeError("Chromium closed the DevTools pipe: " + self.log.read().decode(errors="replace")[-2000:])
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method and e.get("sessionId") == session:
                return self.events.pop(i)
        while True:
            e = self._read_message(deadline)
            if e.get("method") == method and e.get("sessionId") == session:
                return e
            self.events.append(e)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # already gone
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)


def check_page(html: Path, executable: str, timeout: float = 60.0, screenshot: Path | None = None) -> list[str]:
    """Load ``html`` in headless Chromium; return the problems found (empty: the page is fine)."""
    browser = Browser(executable, timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.send("Page.navigate", {"url": html.resolve().as_uri()}, session=session)
        browser.wait_for("Page.loadEventFired", session)
        images = json.loads(browser.send("Runtime.evaluate", {"expression": IMAGES_JS, "returnByValue": True},
                                         session=session)["result"]["value"])
        if screenshot is not None:
            shot = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                                session=session)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)  # flush pending events
        problems = [f"image did not load: {i['src']}" for i in images if not i["ok"]]
        for e in browser.events:
            p = e.get("params", {})
            if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                problems.append(f"console error: {args}")
            elif e.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                problems.append(f"uncaught exception: {d.get('exception', {}).get('description', d.get('text'))}")
            elif e.get("method") == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                problems.append(f"browser error: {entry.get('text')} {entry.get('url', '')}".strip())
        if not images:
            problems.append("the page has no images")
        return problems
    finally:
        browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the report's index.html")
    parser.add_argument("--screenshot", type=Path, help="also write a full-page screenshot (PNG) here")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each browser step")
    parser.add_argument("--chromium", help="Chromium executable (default: $CHROMIUM or chromium on PATH)")
    args = parser.parse_args(argv)
    if not args.html.is_file():
        print(f"{args.html}: no such file", file=sys.stderr)
        return 2
    executable = find_chromium(args.chromium)
    if executable is None:
        print("no Chromium found: install the Debian package `chromium`, or give --chromium / $CHROMIUM",
              file=sys.stderr)
        return 2
    problems = check_page(args.html, executable, args.timeout, args.screenshot)
    for p in problems:
        print(f"{args.html}: {p}", file=sys.stderr)
    if not problems:
        print(f"{args.html}: ok in {executable}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
