"""Headless Chromium for browser tests: :class:`ChromeDriverServer` (Debian's
``chromedriver``, package ``chromium-driver``, on a free loopback port) and the fixtures
``chromedriver_server`` (one for the session) and ``browser`` (a fresh headless Chromium
per test, driven by selenium through that server).

``scripts/install-services.sh`` installs ``chromium`` and ``chromium-driver`` (its APT table);
selenium comes with the dev extra.  Under CI=true a missing one fails the test.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.services._base import (
    LOOPBACK,
    STARTUP_TIMEOUT,
    ServiceUnavailable,
    _ServerProcess,
    _session_service,
    start_or_report,
)

#: window size of the browser fixture (the dashboard screenshots are taken at this size)
WINDOW = (1280, 1400)


def _find(name: str, env: str) -> str | None:
    candidate = os.environ.get(env) or name
    return shutil.which(candidate) or (f"/usr/bin/{candidate}"
                                       if os.path.exists(f"/usr/bin/{candidate}") else None)


class ChromeDriverServer(_ServerProcess):
    """``chromedriver --port=N`` on a free loopback port; ``start()`` waits until ``/status``
    says ready.  :meth:`browser` opens a headless Chromium session through it."""

    name = "chromedriver"

    def __init__(self, *, host: str = LOOPBACK, startup_timeout: float = STARTUP_TIMEOUT,
                 die_with_parent: bool = True) -> None:
        driver = _find("chromedriver", "CHROMEDRIVER_BIN")
        chromium = _find("chromium", "CHROMIUM_BIN")
        if driver is None or chromium is None:
            raise ServiceUnavailable("chromium and chromedriver not found (install them: `make "
                                     "bootstrap`, or apt-get install -y chromium chromium-driver)")
        try:
            import selenium  # noqa: F401
        except ImportError as exc:
            raise ServiceUnavailable("selenium is not installed (pip install -e '.[dev]')") from exc
        self.driver_binary = driver
        self.chromium_binary = chromium
        self.host = host
        self._port: int | None = None
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        self._profiles = itertools.count(1)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _launch(self) -> None:
        self._spawn([self.driver_binary, f"--port={self.port}", "--allowed-ips=",
                     f"--log-path={self.dir / 'chromedriver-verbose.log'}"],
                    self._ready, "answer /status ready")

    @property
    def dir(self) -> Any:
        assert self._dir is not None
        return self._dir

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.url}/status", timeout=2) as r:
            return bool(json.load(r).get("value", {}).get("ready"))

    def browser(self) -> Any:
        """A new headless Chromium session (selenium ``WebDriver``); the caller quits it."""
        from selenium import webdriver

        opts = webdriver.ChromeOptions()
        opts.binary_location = self.chromium_binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                    "--disable-gpu", "--no-first-run", "--disable-extensions",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}",
                    f"--user-data-dir={self.dir / f'profile-{next(self._profiles)}'}"):
            opts.add_argument(arg)
        driver = webdriver.Remote(command_executor=self.url, options=opts)
        driver.set_page_load_timeout(30)
        return driver


CHROMIUM_FIXTURES = frozenset({"chromedriver_server", "browser"})


@pytest.fixture(scope="session")
def chromedriver_server() -> Iterator[ChromeDriverServer]:
    """One chromedriver for the session."""
    server = start_or_report(ChromeDriverServer)
    with _session_service("chromedriver_server", server):
        yield server


@pytest.fixture
def browser(chromedriver_server: ChromeDriverServer) -> Iterator[Any]:
    """A fresh headless Chromium (selenium WebDriver), quit after the test."""
    driver = chromedriver_server.browser()
    try:
        yield driver
    finally:
        driver.quit()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test using one of CHROMIUM_FIXTURES ``chromium``."""
    for item in items:
        if CHROMIUM_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.chromium)
