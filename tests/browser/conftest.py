"""Fixtures for the job page's tests: one real ``gif-service serve`` (tests/stack.py) with the
digits inputs uploaded, and a headless Chromium driven by Selenium through the system's
``chromedriver`` (Debian's ``chromium`` and ``chromium-driver``; ``.ci/run`` installs them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import digits, files, trained  # noqa: F401  (fixtures)
from tests.service.conftest import remove_body as service_remove_body
from tests.stack import Stack

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with Stack("embedded", tmp_path_factory.mktemp("ui")) as running:
        running.url = f"http://127.0.0.1:{running.port}"
        yield running


@pytest.fixture(scope="session")
def inputs(stack, files) -> dict[str, dict]:  # noqa: F811  (the imported fixture)
    return stack.upload(files, ("checkpoint", "train", "test"))


def remove_body(inputs: dict[str, dict], **changes: Any) -> dict:
    """A small digits removal (seconds), with the forgetting audit (holdout and reference)."""
    audited = {
        "holdout": inputs["test"]["id"],
        "reference": inputs["checkpoint"]["id"],
        "options": {"newton_steps": 2, "hessian_samples": 256},
    }
    return service_remove_body(inputs, **{**audited, **changes})


def submit(client: httpx.Client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _binary(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture(scope="session")
def downloads(tmp_path_factory) -> Path:
    """Where the browser saves downloads."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="session")
def browser(downloads) -> Iterator[Any]:
    """Headless Chromium with its console log readable (``driver.get_log("browser")``) and
    downloads saved to ``downloads`` without asking."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    chromium, driver_path = _binary(CHROMIUM), _binary(("chromedriver",))
    if chromium is None or driver_path is None:
        missing = "needs Debian's chromium and chromium-driver (.ci/run installs them)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI must run the browser tests, never skip them
        pytest.skip(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1400", "--disable-extensions"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    driver.set_script_timeout(10)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def until(browser) -> Callable[..., Any]:
    """``until(condition, timeout)``: poll ``condition(driver)`` until it is truthy."""
    from selenium.webdriver.support.ui import WebDriverWait

    def wait(condition: Callable[[Any], Any], timeout: float = 15) -> Any:
        return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)

    return wait


@pytest.fixture
def shots(tmp_path) -> Callable[[Any, str], Path]:
    """Save a screenshot under the test's tmp folder and print its path."""

    def save(driver: Any, name: str) -> Path:
        path = tmp_path / f"{name}.png"
        driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    return save
