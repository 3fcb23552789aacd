"""The status page (``GET /``) in a real browser: Debian's headless Chromium driven by selenium through
Debian's chromedriver (``make test`` installs both)."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from httpservice import KEY, HttpService, wait_for
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HOSTILE = "<img src=x onerror=alert(1)>.txt"


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="flexingest-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1100,900"):
        options.add_argument(flag)
    service = DriverService(executable_path=CHROMEDRIVER)  # never a driver downloaded
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()
        process = service.process
        if process is not None and process.poll() is None:  # chromedriver, by its own pid
            process.kill()
            process.wait(10)
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[HttpService, Path]]:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "fine.txt").write_text("fine")
    (tmp_path / "docs" / HOSTILE).write_text("hostile")
    hook = f"refuse_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{hook}.py").write_text(
        "def check(record):\n"
        "    if 'onerror' in record['key']:\n"
        "        raise ValueError('cannot read ' + record['key'] + ' <b>bold</b>')\n"
        "    return record\n")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1,
        "connectors": [{"name": "docs", "type": "local", "config": {"path": "docs"}}],
        "steps": [{"python": {"callable": f"{hook}:check"}}],
        "syncs": [{"name": "docs", "connector": "docs", "schedule": {"every": "1h"}},
                  {"name": "later", "connector": "docs", "schedule": {"cron": "0 3 * * *"}}],
    }))
    service = HttpService(path)
    try:
        service.ready()
        yield service, tmp_path / ".flexingest" / "pipeline.db"
    finally:
        assert service.stop() == 0, service.log()


def runs(state: Path, sync: str) -> int:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM runs WHERE sync = ? AND ended_at IS NOT NULL",
                              (sync,)).fetchone()[0])


SNAPSHOT = """
const card = document.querySelector(`section[data-sync="${arguments[0]}"]`);
if (!card) return null;
const counts = {};
for (const d of card.querySelectorAll("dl.counts div")) counts[d.dataset.count] = d.querySelector("dd").textContent;
return {health: card.querySelector(".health").textContent, counts,
        problems: [...card.querySelectorAll("tr.problem")].map(
            (r) => [r.querySelector("td.key").textContent, r.querySelector("td.error").textContent]),
        said: card.querySelector("[data-said]").textContent, text: card.innerText};
"""


def snapshot(driver: webdriver.Chrome, sync: str) -> dict[str, Any]:
    """What the card of ``sync`` shows, read at once (the page redraws itself every few seconds)."""
    found: dict[str, Any] = driver.execute_script(SNAPSHOT, sync)
    return found


def click(driver: webdriver.Chrome, sync: str, action: str) -> None:
    driver.execute_script(f'document.querySelector(`section[data-sync="${{arguments[0]}}"] '
                          f'button[data-action="{action}"]`).click()', sync)


def test_the_status_page_shows_the_syncs_and_runs_a_pass(browser: webdriver.Chrome, served: tuple[HttpService, Path],
                                                         tmp_path: Path) -> None:
    service, state = served
    wait_for(lambda: runs(state, "docs") >= 1 and runs(state, "later") >= 1, 30, "the first passes")
    browser.get(f"{service.url}/")
    key_field = browser.find_element(By.ID, "key")
    wait_for(key_field.is_displayed, 10, "the page to ask for the key")
    assert key_field.get_attribute("type") == "password"
    assert not browser.find_elements(By.CSS_SELECTOR, "section.sync"), "nothing shown without the key"

    key_field.send_keys("not-the-key" + Keys.ENTER)
    wait_for(lambda: browser.find_element(By.ID, "login-error").text == "That key was refused.", 10, "a refusal")
    browser.find_element(By.ID, "key").send_keys(KEY + Keys.ENTER)
    wait_for(lambda: snapshot(browser, "docs"), 10, "the syncs")
    assert browser.execute_script("return sessionStorage.getItem('flexingest-api-key')") == KEY
    assert KEY not in browser.current_url and browser.current_url == f"{service.url}/"
    assert not browser.find_element(By.ID, "key").get_attribute("value"), "the field is emptied"

    docs = snapshot(browser, "docs")
    assert docs["health"] == "failing"
    assert docs["counts"]["done"] == "1" and docs["counts"]["failed"] == "1" and docs["counts"]["backlog"] == "0"
    assert "Next pass:" in docs["text"] and "Last pass:" in docs["text"]
    assert snapshot(browser, "later")["counts"]["done"] == "1"

    assert len(docs["problems"]) == 1
    key, error = docs["problems"][0]
    assert key == HOSTILE, "a hostile key is shown as text"
    assert f"ValueError: cannot read {HOSTILE} <b>bold</b>" in error
    assert not browser.find_elements(By.TAG_NAME, "img") and not browser.find_elements(By.TAG_NAME, "b")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - no script of the key ran

    before = runs(state, "docs")
    click(browser, "docs", "run")
    wait_for(lambda: runs(state, "docs") == before + 1, 30, "the pass the button asked for")
    wait_for(lambda: snapshot(browser, "docs")["said"] == "A pass started.", 10, "the answer of the button")

    click(browser, "docs", "retry")
    wait_for(lambda: snapshot(browser, "docs")["said"] == "1 object(s) will be processed again.", 10, "the retry")
    wait_for(lambda: snapshot(browser, "docs")["counts"]["pending"] == "1", 10, "the page refreshing itself")

    shot = tmp_path / "status-page.png"
    browser.save_screenshot(str(shot))
    browser.set_window_size(390, 844)  # a phone
    phone = tmp_path / "status-page-phone.png"
    browser.save_screenshot(str(phone))
    assert shot.stat().st_size > 10_000 and phone.stat().st_size > 10_000
    print(f"screenshots: {shot} {phone}")
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 390, "no sideways scrolling"
