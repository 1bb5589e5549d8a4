"""The live dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium), with WSGI and with ASGI workers: the worker rows show the real worker pids, their
interface and the requests each served, a killed worker's row is replaced by
its successor's without a reload, the charts fill, and a screenshot is saved (docs/images/
dashboard.png is one, written with PREFORK_LB_SCREENSHOT=docs/images/dashboard.png)."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import HOST, free_port, wait_for
from tests.server import ServerProcess

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "dashboard-token-0123456789"

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is in the test extra: pip install -e '.[test]'"
)
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "no headless browser: apt-get install chromium chromium-driver (.ci/run installs them)",
        allow_module_level=True,
    )


def worker_pids(srv: ServerProcess) -> set[int]:
    return set(srv.children_titled("worker"))


@pytest.fixture(scope="module")
def browser() -> Any:
    """One Chromium for the module's tests (each opens its own page, which starts afresh)."""
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
    ):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


class Traffic:
    """A bounded trickle of requests (at most ``limit``, until stopped) so the charts have data."""

    def __init__(self, port: int, limit: int = 3000) -> None:
        self.port, self.limit = port, limit
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        for i in range(self.limit):
            if self.stop.wait(0.01):
                return
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=5)
                conn.request("GET", "/missing" if i % 25 == 0 else "/")
                conn.getresponse().read()
                conn.close()
            except OSError:
                pass

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def rows(driver: Any) -> set[int]:
    """The pids of the worker rows, read in one go (the page replaces its rows every second)."""
    pids = driver.execute_script(
        "return [...document.querySelectorAll('#workers tbody tr')].map((tr) => Number(tr.dataset.pid))"
    )
    return set(pids)


def cells(driver: Any) -> list[dict[str, Any]]:
    """Each worker row's pid, interface and served count, as the page shows them."""
    return list(
        driver.execute_script(
            "return [...document.querySelectorAll('#workers tbody tr')].map((tr) => ({pid: Number(tr.dataset.pid),"
            " interface: tr.querySelector('.interface').textContent,"
            " served: Number(tr.querySelector('.served').textContent)}))"
        )
    )


def points(driver: Any) -> int:
    return int(driver.find_element("tag name", "body").get_attribute("data-points") or 0)


@pytest.mark.parametrize(
    ("app", "interface"),
    [("tests.apps:hello", "wsgi"), ("tests.apps_asgi:behave", "asgi")],
    ids=["wsgi", "asgi"],
)
def test_the_dashboard_shows_the_workers_and_follows_a_replacement(
    start_server, browser, tmp_path: Path, app: str, interface: str
) -> None:
    admin = free_port()
    srv = start_server(app, "-w", "2", "--interface", interface, "--stats-bind", f"{HOST}:{admin}")
    pids = wait_for(lambda: len(worker_pids(srv)) == 2 and worker_pids(srv), 15, "two workers")
    with Traffic(srv.port):
        browser.get(f"http://{HOST}:{admin}/")
        wait_for(lambda: rows(browser) == pids, 15, f"rows for the worker pids {pids}")
        # Each row says what its worker serves, and counts the requests it served (the kernel
        # spreads the trickle's fresh connections over both reuseport listeners).
        wait_for(
            lambda: all(c["interface"] == interface and c["served"] > 0 for c in cells(browser)),
            15,
            f"rows of {interface} workers that served requests: {cells(browser)}",
        )
        header = browser.find_element("id", "m-pid").text
        assert header == str(srv.pid)
        assert browser.find_element("id", "m-mode").text == "reuseport"
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        new = wait_for(
            lambda: (p := worker_pids(srv)) and len(p) == 2 and victim not in p and p,
            15,
            "a replacement worker",
        )
        wait_for(lambda: rows(browser) == new, 15, f"the rows to follow the replacement: {new}")
        wait_for(lambda: browser.find_element("id", "status").text == "ok", 10, "status ok again")
        # The charts have points (one a second; a rate needs two): the request rate shows a number.
        wait_for(lambda: points(browser) >= 3, 20, "three points on the charts")
        assert browser.find_element("id", "now-rate").text not in ("", "-")
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("PREFORK_LB_SCREENSHOT"):
            shutil.copy(shot, os.environ["PREFORK_LB_SCREENSHOT"])


def test_with_a_token_the_page_asks_for_it_and_uses_it_from_the_fragment(start_server, browser) -> None:
    admin = free_port()
    srv = start_server(
        "tests.apps:hello",
        "-w",
        "1",
        "--stats-bind",
        f"{HOST}:{admin}",
        env={"PREFORK_LB_STATS_TOKEN": TOKEN},
    )
    pids = wait_for(lambda: len(worker_pids(srv)) == 1 and worker_pids(srv), 15, "a worker")
    browser.get(f"http://{HOST}:{admin}/")  # the page itself holds no data: served without the token
    wait_for(
        lambda: "401" in browser.find_element("id", "error").text, 10, "the page saying it needs the token"
    )
    assert rows(browser) == set()
    browser.get(f"http://{HOST}:{admin}/#token={TOKEN}")
    browser.refresh()
    wait_for(lambda: rows(browser) == pids, 15, "rows once the token is given")
