"""The job page over plain HTTP (no browser), against the real server: the page and its assets
carry the page's Content-Security-Policy, the HTML has no inline script, style or handler, the
assets are versioned and cacheable, every module import resolves, and the JSON API keeps its
own headers."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from service.routers.ui import CONTENT_SECURITY_POLICY, STATIC

#: What would run text as code, or put markup together from strings.
UNSAFE_JS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setAttribute\(\"on"
)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag if tag in ("script", "style") else None

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open and data.strip():
            self.inline.append(f"<{self._open}>{data.strip()[:80]}")


@pytest.fixture(scope="module")
def page(stack) -> httpx.Response:
    return httpx.get(f"{stack.url}/ui", timeout=10)


@pytest.fixture(scope="module")
def tags(page) -> Tags:
    parser = Tags()
    parser.feed(page.text)
    return parser


def test_the_page_is_served_with_its_policy_and_never_cached(page):
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-cache"
    for directive in ("default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"):
        assert directive in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY


def test_the_html_has_no_inline_script_style_or_handler(tags):
    scripts = [attrs for tag, attrs in tags.tags if tag == "script"]
    assert scripts and all(attrs.get("src") for attrs in scripts)
    assert tags.inline == []
    assert not [tag for tag, _ in tags.tags if tag == "style"]
    handlers = [
        (tag, name) for tag, attrs in tags.tags for name in attrs if name.startswith("on") or name == "style"
    ]
    assert handlers == []


def _assets(tags: Tags) -> list[str]:
    return [attrs.get("src") or attrs["href"] for tag, attrs in tags.tags
            if (tag == "script" or (tag == "link" and attrs.get("rel") == "stylesheet"))]  # fmt: skip


def test_assets_are_versioned_cacheable_and_under_the_policy(stack, tags):
    urls = _assets(tags)
    assert {Path(url).name for url in urls} == {"main.js", "page.css"}
    for url in urls:
        response = httpx.get(f"{stack.url}/{url}", timeout=10)
        assert response.status_code == 200, url
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "immutable" in response.headers["cache-control"]
        expected = "text/javascript" if url.endswith(".js") else "text/css"
        assert response.headers["content-type"].startswith(expected)
    stale = re.sub(r"/static/[^/]+/", "/static/000000000000/", urls[0])
    missing = httpx.get(f"{stack.url}/{stale}", timeout=10)
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    assert missing.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    traversal = httpx.get(f"{stack.url}/{urls[0].rsplit('/', 1)[0]}/..%2F..%2Frouters%2Fui.py", timeout=10)
    assert traversal.status_code == 404


def test_every_module_import_resolves(stack, tags):
    base = next(url for url in _assets(tags) if url.endswith("main.js")).rsplit("/", 1)[0]
    modules = sorted(STATIC.glob("*.js"))
    for module in modules:
        for name in re.findall(r'from "\./([\w.-]+\.js)"', module.read_text()):
            assert (STATIC / name).exists(), f"{module.name} imports {name}"
        assert httpx.get(f"{stack.url}/{base}/{module.name}", timeout=10).status_code == 200


def test_the_scripts_never_turn_text_into_markup_or_code():
    for module in sorted(STATIC.glob("*.js")):
        found = UNSAFE_JS.findall(module.read_text())
        assert found == [], f"{module.name}: {found}"


def test_the_api_keeps_its_own_headers(stack):
    response = stack.client.get("/v1/jobs")
    assert response.status_code == 200
    assert response.headers.get("content-security-policy") != CONTENT_SECURITY_POLICY
