"""The job page in a real browser (headless Chromium) against a real server: the key asked for
once, a job submitted through the API watched until it finishes, its charts drawn as SVG, an
artifact downloaded, no Content-Security-Policy violation, and a filename an uploader chose
shown as text, never run. Screenshots go to the test's tmp folder (their paths are printed)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from gif_client import progress_line
from tests.stack import KEY, wait_finished

from .conftest import remove_body, submit

pytestmark = pytest.mark.slow

#: Markup an uploader may put in a filename: were it parsed as HTML, the handler would set a flag
#: (and the page's CSP would report the inline handler it refused).
PAYLOAD = "<img src=x onerror=window.__xss=1>"


def console_problems(driver) -> list[str]:
    """Console entries since the last call that are errors or CSP reports."""
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]
    ]


def sign_in(driver, stack, until) -> None:
    """Open /ui in a fresh session and give the key once."""
    driver.get(f"{stack.url}/ui")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{stack.url}/ui")
    field = until(lambda d: d.find_element("id", "api-key"))
    field.send_keys(KEY + "\n")
    until(lambda d: d.find_elements("id", "jobs"))


def test_a_job_is_watched_to_its_charts_and_downloads(stack, inputs, browser, until, shots, downloads):
    console_problems(browser)
    sign_in(browser, stack, until)
    job = submit(stack.client, remove_body(inputs))
    browser.get(f"{stack.url}/ui#/")  # the list, now with the job; its link opens the job's view
    until(lambda d: d.find_element("css selector", f'tr[data-job="{job["id"]}"] a')).click()
    until(lambda d: d.find_element("css selector", "#job[data-done]"), timeout=60)
    final = stack.client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "succeeded", final["error"]
    assert browser.find_element("id", "job").get_attribute("data-status") == "succeeded"
    # the page shows the line the CLI prints (gif_client/progress.py)
    assert browser.find_element("css selector", "[data-progress-line]").text == progress_line(final)

    charts = browser.find_elements("css selector", "#charts svg.chart")
    titles = [chart.get_attribute("aria-label") for chart in charts]
    assert len(charts) == 4, titles  # per-class accuracy, two audit histograms, residuals
    for chart in charts:
        bars = [r for r in chart.find_elements("css selector", "rect:not(.legend rect)")
                if float(r.get_attribute("height")) > 0]  # fmt: skip
        lines = [p for p in chart.find_elements("css selector", "path.line") if len(p.get_attribute("d")) > 3]
        assert bars or lines, chart.get_attribute("aria-label")
    residual_steps = browser.find_elements("css selector", "#charts path.line")
    assert len(residual_steps) == 2  # one curve per Newton step

    report = next(e for e in final["result"]["artifacts"] if e["kind"] == "report")
    browser.find_element("css selector", f'button[data-artifact="{report["id"]}"]').click()
    saved = downloads / "report.json"
    deadline = time.monotonic() + 10
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == report["sha256"]
    assert json.loads(saved.read_text())["job_id"] == job["id"]

    shots(browser, "job-page")
    assert console_problems(browser) == []

    # another class from the same checkpoint, data and options: its page shows the estimate
    again = submit(stack.client, remove_body(inputs, forget={"class": 5}))
    browser.get(f"{stack.url}/ui#/jobs/{again['id']}")
    # read in one script call: the view re-renders its facts at every poll (only this job's have
    # an estimate: the first job had none)
    read = "return [...document.querySelectorAll('dl.facts dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent]);"
    shown = until(lambda d: (facts := dict(d.execute_script(read))).get("Estimate") and facts, timeout=60)
    estimate = stack.client.get(f"/v1/jobs/{again['id']}").json()["estimate"]
    jobs = estimate["based_on"]
    assert shown["Estimate"].endswith(f"the median of {jobs} job{'' if jobs == 1 else 's'} like it"), shown
    assert console_problems(browser) == []


def test_text_an_uploader_chose_is_shown_as_text(stack, inputs, files, browser, until, shots):
    with open(files["queries"], "rb") as f:
        response = stack.client.post(
            "/v1/artifacts", files={"file": (f"{PAYLOAD}.safetensors", f)}, data={"kind": "dataset"}
        )
    assert response.status_code == 201, response.text
    queries = response.json()
    assert queries["filename"] == f"{PAYLOAD}.safetensors"  # kept as given: the page must cope
    body = {"type": "scores", "model": remove_body(inputs)["model"], "train": inputs["train"]["id"],
            "queries": queries["id"], "top_k": 5, "options": {"solver": "cg", "max_iter": 10}}  # fmt: skip
    job = submit(stack.client, body)
    console_problems(browser)
    sign_in(browser, stack, until)
    browser.get(f"{stack.url}/ui#/jobs/{job['id']}")
    cell = until(
        lambda d: d.find_element("css selector", '#inputs[data-ready] tr[data-input="queries"] .filename')
    )
    assert cell.text == f"{PAYLOAD}.safetensors"
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    assert browser.execute_script("return window.__xss") is None
    shots(browser, "uploader-text")
    assert console_problems(browser) == []
    wait_finished(stack.client, job["id"])  # leave no job running for the next test


def test_the_page_formats_progress_as_the_sdk_does(stack, browser, until):
    """The page's progress.js and gif_client/progress.py give the same line for the same job."""
    browser.get(f"{stack.url}/ui")
    source = browser.find_element("css selector", "script[type=module]").get_attribute("src")
    fractions = [None, 0, 0.005, 0.29, 0.57, 0.999, 1, 1.0, -0.5, 2, "0.5", True]
    jobs = [{"status": "running", "progress": {"stage": "solving_ihvp", "fraction": f, "message": "newton step 1/2"}}
            for f in fractions]  # fmt: skip
    jobs += [
        {"status": "queued", "progress": None},
        {"status": "succeeded"},
        {"status": "running", "progress": {}},
    ]
    script = """
        const [url, jobs, done] = arguments;
        import(url.replace("main.js", "progress.js"))
            .then((m) => done(jobs.map((job) => m.progressLine(job))))
            .catch((e) => done(String(e)));
    """
    assert browser.execute_async_script(script, source, jobs) == [progress_line(job) for job in jobs]


def test_the_console_check_sees_a_policy_violation(stack, browser):
    """The checks above would notice markup run as HTML: the page's policy refuses an inline
    handler and Chromium reports it in the console this test reads."""
    browser.get(f"{stack.url}/ui")
    console_problems(browser)
    browser.execute_script(
        "const d = document.createElement('div'); d.innerHTML = arguments[0]; document.body.append(d);",
        PAYLOAD,
    )
    deadline = time.monotonic() + 5
    problems: list[str] = []
    while not problems and time.monotonic() < deadline:
        time.sleep(0.1)
        problems = console_problems(browser)
    assert any("Content Security Policy" in message for message in problems), problems
    assert browser.execute_script("return window.__xss") is None
