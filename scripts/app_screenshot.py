"""The README's picture of the web app: the catalog's esd-red in Compare, base vs erased for "a red circle".

    python scripts/app_screenshot.py [--out docs/app.png] [--chromium /usr/bin/chromium]

Starts ``python app.py`` on a free loopback port, drives it with Playwright in the system's Chromium (Playwright's
own browser download is not used), saves a full-page screenshot and stops the app.
"""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"the app did not answer at {url} within {seconds:.0f} s")
            time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "app.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    port = free_port()
    app = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("tab", name="Compare").click()
            page.locator("#catalog input").click()
            page.get_by_role("option", name=re.compile(r"^esd-red \(red, ")).click()  # any method
            page.click("#add-catalog")
            expect(page.locator("#stack")).to_contain_text("esd-red", timeout=30_000)
            page.locator("#prompt").get_by_role("textbox").fill("a red circle")
            images = page.locator("#num-images input[type=number]")
            images.fill("4")
            images.press("Enter")
            page.click("#compare-btn")
            expect(page.locator("#erased img")).to_be_visible(timeout=120_000)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        app.terminate()
        app.wait()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
