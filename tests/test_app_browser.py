"""The web app in a real browser: ``python app.py`` on a free loopback port, driven by Playwright in Debian's
Chromium (``.ci/run`` installs it with apt). Erase, cancel, compare, and bad input shown in the page.

The screenshot of the Compare tab is saved to ``$ESD_LORA_SCREENSHOT`` (the README's ``docs/app.png``) or, by
default, into the test's temporary folder.
"""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from esd_lora import load_adapter

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
STARTUP_S = 180  # importing torch, diffusers and gradio on a busy CI machine
JOB_MS = 120_000  # an erase or compare on the bundled base

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason=f"no Chromium at {CHROMIUM}: install Debian's with 'apt-get install -y "
                                       "chromium' (.ci/run does)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``python app.py`` serving on a free loopback port; Hub calls go to a port where nothing listens."""
    tmp = tmp_path_factory.mktemp("app")
    port = free_port()
    (tmp / "tmpdir").mkdir()
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_CACHE": str(tmp / "hub"),
           "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp / "tmpdir")}
    log = (tmp / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the app did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
    yield url
    assert list((tmp / "tmpdir").glob("esd-lora-app-*")), "the app keeps its files in a work folder under TMPDIR"
    process.terminate()  # SIGTERM, as kill and service managers send: the app stops as on Ctrl-C
    assert process.wait(timeout=30) == 0, (tmp / "server.log").read_text()[-3000:]
    log.close()
    assert not list((tmp / "tmpdir").glob("esd-lora-app-*")), "the app's work folder outlived it"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--headless", "--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server)
    expect(page.locator("#erase-btn")).to_be_visible()
    yield page
    page.close()


def field(page, elem_id: str):
    return page.locator(f"#{elem_id}").get_by_role("textbox")


def shows_error(page, text: str) -> None:
    """``text`` appears in an error message of the page; the message is then dismissed."""
    toast = page.locator(".toast-body").filter(has_text=text)
    expect(toast).to_be_visible()
    page.locator(".toast-body .toast-close").first.click()
    expect(toast).to_have_count(0)


def image(page, elem_id: str) -> np.ndarray:
    src = page.locator(f"#{elem_id} img").get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"), dtype=float)


def test_bad_input_is_shown_and_the_app_keeps_serving(page, tmp_path):
    page.click("#erase-btn")  # the concept field starts empty
    shows_error(page, "no concept given")
    field(page, "concepts").fill("red")
    field(page, "iterations").fill("ten")
    page.click("#erase-btn")
    shows_error(page, "iterations must be a number, got 'ten'")

    page.get_by_role("tab", name="Compare").click()
    field(page, "hub-id").fill("nobody/no-such-adapter")
    page.click("#add-hub")
    shows_error(page, "nobody/no-such-adapter")
    not_adapter = tmp_path / "notes.safetensors"
    not_adapter.write_bytes(b"these are notes, not tensors")
    page.locator("#upload input[type=file]").set_input_files(not_adapter)
    shows_error(page, "notes.safetensors")

    page.get_by_role("tab", name="Erase").click()  # still serving: the server answers the next request
    page.click("#cancel-btn")
    expect(page.locator("#erase-note")).to_contain_text("nothing to cancel")


def test_cancel_stops_a_running_erasure(page):
    field(page, "concepts").fill("blue")
    field(page, "iterations").fill("100000")
    page.click("#erase-btn")
    expect(page.locator("#erase-status progress")).to_be_visible(timeout=JOB_MS)
    expect(page.locator("#busy")).to_contain_text("busy")
    page.click("#cancel-btn")
    expect(page.locator("#erase-note")).to_contain_text("cancelling")
    expect(page.locator("#erase-status")).to_contain_text("nothing was written", timeout=JOB_MS)
    expect(page.locator("#busy")).to_contain_text("idle")


def test_erase_then_compare_shows_different_images(page, tmp_path):
    field(page, "concepts").fill("red")
    field(page, "iterations").fill("40")  # the default erasure moves "a red circle" by 10 grey levels (1 at 10 steps)
    page.click("#erase-btn")
    expect(page.locator("#erase-status")).to_contain_text("erased red", timeout=JOB_MS)
    download = page.locator("#adapter-file a[download]")
    expect(download).to_have_attribute("download", "esd-red-esd-x-strict.safetensors")  # the method the base recommends
    (tmp_path / "downloaded.safetensors").write_bytes(page.request.get(download.get_attribute("href")).body())
    assert load_adapter(tmp_path / "downloaded.safetensors").metadata.config.concepts == ["red"]
    page.click("#add-erased")

    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#stack")).to_contain_text("esd-red-esd-x-strict")
    field(page, "prompt").fill("a red circle")
    page.click("#compare-btn")
    expect(page.locator("#erased img")).to_be_visible(timeout=JOB_MS)
    original, erased = image(page, "original"), image(page, "erased")
    assert original.shape == erased.shape and original.shape[0] >= 256
    assert np.abs(original - erased).mean() > 1, "the erasure did not change the image"

    screenshot = Path(os.environ.get("ESD_LORA_SCREENSHOT") or tmp_path / "app.png")
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 0


def test_evaluate_shows_its_progress_then_the_report(page):
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-n").get_by_role("spinbutton").fill("1")  # every concept, both splits: 26 images
    page.click("#evaluate-btn")
    expect(page.locator("#report")).to_contain_text("evaluating", timeout=JOB_MS)  # gradio's bar over the report
    expect(page.locator("#report")).to_contain_text("checkered", timeout=JOB_MS)  # the last concept of the table
    expect(page.locator("#report")).not_to_contain_text("evaluating")
