"""``/ui``: the job page, a static single page that talks to the public JSON API only.

Its files live in service/ui/static/ (plain HTML, ES modules and CSS; nothing to build). They are
served under ``/ui/static/{version}/``, where ``version`` is a digest of their contents, so a
browser may cache them for good and a new release is fetched at once; the page itself is never
cached (it names the current version). The page's Content-Security-Policy is set for every
``/ui`` response by ``UiHeadersMiddleware`` (service/middleware.py) with ``PAGE_HEADERS``.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse

from jobs.errors import NotFound

STATIC = Path(__file__).resolve().parents[1] / "ui" / "static"
PREFIX = "/ui"

#: No inline script or style, no eval, nothing from another origin; images may be blob: URLs
#: (artifact PNGs fetched with the API key) and data: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
}
_IMMUTABLE = "public, max-age=31536000, immutable"

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@cache
def assets() -> dict[str, Path]:
    """The servable files by name (the folder is flat: no path ever reaches the file system)."""
    return {path.name: path for path in sorted(STATIC.iterdir()) if path.suffix in _TYPES}


@cache
def version() -> str:
    """A digest of every asset: changes whenever one does."""
    digest = hashlib.sha256()
    for name, path in assets().items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


@cache
def _page() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8").replace("__VERSION__", version())


@router.get("")
def page() -> HTMLResponse:
    """The single page; ``no-cache`` so that it always names the current asset version."""
    return HTMLResponse(_page(), headers={"cache-control": "no-cache"})


@router.get("/static/{asset_version}/{name}")
def asset(asset_version: str, name: str) -> FileResponse:
    """One asset of the current version (an old version's URL is not found, not stale)."""
    path = assets().get(name)
    if asset_version != version() or path is None or name == "index.html":
        raise NotFound(f"no asset {name!r} in version {asset_version!r}")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers={"cache-control": _IMMUTABLE})
