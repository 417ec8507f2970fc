"""The fleet console in headless Chromium (Debian's), driven by Playwright: see the fleet, pause a rollout."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

from ..harness import ADMIN, run
from .test_rollouts import on_base, poll_all

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (.ci/run installs it)")
        pytest.skip("Debian chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                                    "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


@pytest.mark.e2e  # a real browser: in `make test`, out of `make test-fast`
def test_console_shows_devices_rollouts_and_a_click_pauses_a_rollout(fleet, fleet_kit, tmp_path, browser):
    # Prepare: two devices on 1.0.0 and a running rollout of 1.1.0 whose canary has not reported yet
    async def go():  # type: ignore[no-untyped-def]
        async with httpx.AsyncClient() as c:
            devs = await on_base(fleet, fleet_kit, tmp_path, c, n=2)
            await poll_all(devs, rounds=1)
            return devs

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API already runs an event loop in this thread
        devs = pool.submit(run, go()).result()
    fleet.admin.upload(fleet_kit["bundles"]["1.1.0"])
    r = fleet.admin.rollout("digits", "1.1.0", "cams", [50, 100])
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Execute: log in, read the tables, open a device's timeline, click pause
    page.goto(fleet.url + "/")
    page.fill("#token", ADMIN)
    page.click("#login button")
    row = page.locator(f'#rollouts tr[data-id="{r["id"]}"]')
    row.wait_for()
    assert "running" in row.locator(".state").inner_text()
    assert page.locator("#devices tr.device").count() == 2
    page.locator(f'#devices tr[data-device="{devs[0].ident.device_id}"]').click()
    page.locator("#timeline tbody tr").first.wait_for()
    timeline = page.locator("#timeline tbody").inner_text()
    row.locator('button[data-action="pause"]').click()
    page.wait_for_function(f'document.querySelector(\'#rollouts tr[data-id="{r["id"]}"] .state\').textContent === "paused"')
    page.screenshot(path=str(tmp_path / "console.png"))
    # Assert: the server has it paused; the timeline showed the install steps; no script errors
    assert fleet.admin.get_rollout(r["id"])["state"] == "paused"
    assert "health" in timeline and "switch" in timeline
    assert errors == []
    # A wrong token is an error on the page, not a blank table
    page.fill("#token", "wrong")
    page.click("#login button")
    page.wait_for_function("document.querySelector('#error').textContent.includes('admin token')")
