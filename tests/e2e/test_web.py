"""The web page in a real browser: Debian's headless Chromium through chromedriver (Selenium;
nothing downloads a browser). Sign in with a read token, see a job appear, open it, see its
output arrive while it runs, a colour rendered and a secret masked. The screenshot is kept in
the test's tmp dir (``web-job.png``)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from .helpers import wait_for
from .httpserver import http_server, make_token

pytestmark = pytest.mark.timeout(300)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("apt-get install chromium chromium-driver (see .ci/run)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


async def _in_browser(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def test_sign_in_follow_a_running_job_colours_and_masking(
    db: Path, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    read = make_token(db, "viewer", "read")
    run = make_token(db, "agent", "run")
    async with http_server(db) as srv:
        b = browser
        await _in_browser(b.get, f"{srv.url}/")
        assert "/login" in b.current_url
        await _in_browser(b.find_element(By.ID, "token").send_keys, "mbj_wrong")
        await _in_browser(b.find_element(By.ID, "signin").click)
        assert "unknown" in b.find_element(By.ID, "error").text
        await _in_browser(b.find_element(By.ID, "token").send_keys, read)
        await _in_browser(b.find_element(By.ID, "signin").click)
        await wait_for(lambda: b.find_elements(By.ID, "rows"), timeout=30)
        # A job started by an agent appears in the open list (server-sent events).
        command = (
            f"printf '\\033[31mred alert\\033[0m\\n'; echo token={SECRET}; "
            "echo line-1; while [ ! -e go ]; do sleep 0.1; done; echo line-after-go; sleep 120"
        )
        async with srv.client(run) as c:
            r = await c.call_tool("execute", {"command": command, "cwd": str(tmp_path)})
            assert r.structured_content is not None
            job_id = r.structured_content["id"]
        # The job appears in the open list, and the live counts see it run (server-sent events).
        await wait_for(
            lambda: b.find_elements(By.CSS_SELECTOR, f'a[href="/jobs/{job_id}"]'),
            timeout=60, message="the job in the list",
        )  # fmt: skip
        await wait_for(
            lambda: b.find_element(By.CSS_SELECTOR, '#counts b[data-status="running"]').text
            == "1",
            timeout=60, message="the running count",
        )  # fmt: skip
        # (The list's rows are replaced as they update: open the link by its address.)
        await _in_browser(b.get, f"{srv.url}/jobs/{job_id}")
        await wait_for(lambda: "line-1" in b.find_element(By.ID, "output").text, timeout=60)
        assert "line-after-go" not in b.find_element(By.ID, "output").text
        marker = b.find_element(By.ID, "command")  # goes stale if the page reloads
        (tmp_path / "go").touch()
        # The new line arrives while the job runs, on the same page (no reload).
        await wait_for(
            lambda: "line-after-go" in b.find_element(By.ID, "output").text,
            timeout=60, message="line-after-go on the page",
        )  # fmt: skip
        assert marker.text  # the same document: the element is not stale
        assert b.find_element(By.ID, "status").text == "running"
        text = b.find_element(By.ID, "output").text
        assert "red alert" in text and SECRET not in text and "token=" in text
        assert SECRET not in b.page_source
        red = b.find_element(By.XPATH, '//pre[@id="output"]//span[contains(., "red alert")]')
        colour = red.value_of_css_property("color")
        assert colour.startswith("rgba(") and colour != "rgba(221, 221, 221, 1)", colour
        shot = tmp_path / "web-job.png"
        assert b.save_screenshot(str(shot)) and shot.stat().st_size > 0
        async with srv.client(run) as c:
            await c.call_tool("kill", {"job_id": job_id})
        await wait_for(lambda: b.find_element(By.ID, "status").text == "killed", timeout=30)
