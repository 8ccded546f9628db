"""The web app in a real browser (Debian's Chromium through Playwright) against the real stack.

A stack of its own, with the firmware slowed to 20000 bytes/s so that a print lasts long
enough to pause and cancel, and so that freezing the plug-in host disturbs no other test.
Screenshots of every step go to each test's tmp_path; the completed print also to
docs/webapp.png (the README's picture).
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
import trimesh

from gotapi3dp.client import GotapiClient, GotapiError

from .conftest import Stack

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_PNG = Path(__file__).resolve().parents[2] / "docs" / "webapp.png"  # UPDATE_SCREENSHOT=1 rewrites it
PRINT_TIMEOUT_MS = 300_000      # a slowed print on a busy 2-core machine
STEP_TIMEOUT_MS = 60_000

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(tmp_path_factory.mktemp("webapp-stack"))
    with open(s.config_path, "a") as fh:
        fh.write("\n[printer.firmware]\nbaud = 200000\n")
    s.start()
    s.info["spareContentId"] = _add_spare_model(s)
    try:
        yield s
    finally:
        try:
            os.kill(s.child_pid("plugin-host"), signal.SIGCONT)
        except (IndexError, ProcessLookupError, ValueError):
            pass
        assert s.stop() == 0, s.log_path.read_text()


def _add_spare_model(stack: Stack) -> str:
    """A second model with prints to spare, for the job that is paused and cancelled."""
    path = stack.root / "spare.stl"
    trimesh.creation.box(extents=(30.0, 30.0, 10.0)).export(path)
    out = stack.cli("contents", "add", str(path), "--name", "Spare block", "--prints", "10")
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["id"])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A page of the app with its console errors and a numbered screenshot per step."""

    def __init__(self, browser: Any, base_url: str, shots: Path, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.set_default_timeout(STEP_TIMEOUT_MS)
        self.base_url = base_url
        self.shots = shots
        self.step = 0

    def shot(self, name: str) -> Path:
        self.step += 1
        path = self.shots / f"{self.step:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def text(self, selector: str) -> str:
        return str(self.page.locator(selector).inner_text())

    def open_and_load_contents(self, stack: Stack) -> None:
        self.page.goto(self.base_url + "/")
        self.page.locator("#printers input[type=radio]:checked").wait_for()
        self.shot("printers")
        self.page.fill("#contents-url", stack.info["contents"])
        self.page.fill("#contents-key", stack.info["contentsKey"])
        self.page.press("#contents-key", "Enter")       # the form submits from the keyboard
        self.page.locator("#contents li").first.wait_for()
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('#contents img')].every(i => i.complete && i.naturalWidth > 0)")
        self.shot("contents")

    def choose_sample(self, stack: Stack) -> None:
        self.page.check(f"#contents input[value='{stack.info['sampleContentId']}']")

    def wait_state(self, *states: str, timeout: int = STEP_TIMEOUT_MS) -> str:
        self.page.wait_for_function(
            "states => states.includes(document.getElementById('job-state').textContent)",
            arg=list(states), timeout=timeout)
        return self.text("#job-state")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def app_page(browser: Any, slow_stack: Stack, tmp_path: Path) -> Iterator[Page]:
    page = Page(browser, slow_stack.info["gotapi"], tmp_path, viewport={"width": 1100, "height": 900})
    try:
        yield page
    finally:
        page.close()


def test_print_the_sample_to_completion(app_page: Page, slow_stack: Stack) -> None:
    p = app_page
    p.open_and_load_contents(slow_stack)
    printers = p.text("#printers")
    assert "Virtual Printer" in printers and "online" in printers
    contents = p.text("#contents")
    assert "Calibration piece" in contents and "Spare block" in contents and "prints allowed: 10" in contents

    p.choose_sample(slow_stack)
    p.page.click("#print")
    p.wait_state("printing", "completed")
    p.shot("printing")
    assert p.wait_state("completed", "failed", "cancelled", timeout=PRINT_TIMEOUT_MS) == "completed"
    p.page.wait_for_function("() => document.getElementById('temps-now').textContent.includes('°C')")
    shot = p.shot("completed")

    assert p.text("#job-progress-text") == "100 %"
    assert p.page.locator("#job-progress").get_attribute("value") == "100"
    layer, layers = p.text("#job-layer").split("/")
    assert layer == layers and int(layers) > 0
    log = p.text("#job-log")
    for state in ("printing", "completed"):
        assert f"state {state}" in log
    assert p.page.locator("#error").is_hidden()
    assert p.text("#job-channel") == "live (GotAPI-5 WebSocket)"  # events came over GotAPI-5
    assert p.errors == []
    if os.environ.get("UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
        p.page.screenshot(path=str(DOCS_PNG), full_page=True)
    assert shot.stat().st_size > 0


def test_pause_resume_and_cancel_on_a_phone_with_the_keyboard(browser: Any, slow_stack: Stack,
                                                               tmp_path: Path) -> None:
    p = Page(browser, slow_stack.info["gotapi"], tmp_path, viewport={"width": 390, "height": 844},
             is_mobile=True, has_touch=True)
    try:
        p.open_and_load_contents(slow_stack)
        assert p.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        radio = p.page.locator(f"#contents input[value='{slow_stack.info['spareContentId']}']")
        radio.focus()
        p.page.keyboard.press("Space")
        assert radio.is_checked()
        p.page.focus("#print")
        p.page.keyboard.press("Enter")
        p.wait_state("printing")
        p.page.wait_for_function("() => Number(document.getElementById('job-progress').value) > 0")
        p.shot("printing")

        p.page.focus("#pause")
        p.page.keyboard.press("Enter")
        assert p.wait_state("paused", "completed") == "paused"
        p.shot("paused")
        p.page.focus("#resume")
        p.page.keyboard.press("Enter")
        assert p.wait_state("printing", "completed") == "printing"

        p.page.focus("#cancel")
        p.page.keyboard.press("Enter")
        assert p.wait_state("cancelled", "completed", "failed") == "cancelled"
        p.shot("cancelled")
        progress = float(p.page.locator("#job-progress").get_attribute("value") or 0)
        assert progress < 100
        log = p.text("#job-log")
        assert "state paused" in log and "state cancelled" in log and "cancel requested" in log
        assert p.page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert p.errors == []
    finally:
        p.close()


def _wait_plugin_gone(stack: Stack) -> GotapiError:
    """Until the GotAPI server answers printer3d calls with an error (the host is frozen)."""
    app = GotapiClient(stack.info["gotapi"], origin="http://localhost:1", timeout=60)
    app.authorize("webapp test", ["printer3d", "serviceDiscovery"])
    service_id = stack.info["serviceId"]
    while True:
        try:
            app.request("GET", "printer3d/status", serviceId=service_id)
        except GotapiError as err:
            if err.code != 7:          # the request that was in flight may time out first
                return err


def test_readable_error_when_the_plugin_host_is_down(app_page: Page, slow_stack: Stack) -> None:
    p = app_page
    p.open_and_load_contents(slow_stack)
    p.choose_sample(slow_stack)
    pid = slow_stack.child_pid("plugin-host")
    os.kill(pid, signal.SIGSTOP)          # frozen: the supervisor sees it alive, the bus does not
    try:
        err = _wait_plugin_gone(slow_stack)
        p.page.click("#print")
        p.page.locator("#error").wait_for(state="visible")
        p.shot("error")
        text = p.text("#error-text")
        assert f"error {err.code}" in text and "GotAPI" in text
        assert err.message in text
    finally:
        os.kill(pid, signal.SIGCONT)
    p.page.click("#error-close")
    assert p.page.locator("#error").is_hidden()
    # the page's own error display replaces console noise
    assert p.errors == []


def test_the_app_is_served_with_a_strict_policy(slow_stack: Stack) -> None:
    import requests
    resp = requests.get(slow_stack.info["gotapi"] + "/", timeout=30)
    assert resp.status_code == 200 and "app.js" in resp.text
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    for name in ("app.js", "style.css"):
        assert requests.get(f"{slow_stack.info['gotapi']}/{name}", timeout=30).status_code == 200
    assert requests.get(f"{slow_stack.info['gotapi']}/secret.py", timeout=30).status_code == 404
