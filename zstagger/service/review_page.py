"""``GET /review``: the review page, one server-rendered HTML page with a small vanilla script and style sheet.

No build step and nothing from elsewhere: the page, ``/review/static/review.js`` and
``review.css`` are files of this package, and the Content-Security-Policy below lets the
browser load nothing else (scripts and styles from this origin only, images from this
origin and blob: URLs, requests to this origin only, no frames, no forms, no inline code).
No cookies: the page asks for the reviewer's API key, keeps it in sessionStorage (gone
when the tab closes) and sends it as ``Authorization: Bearer``; so there is nothing for
another site to ride on (no CSRF). The page itself holds no data: every item, image and
decision goes through ``/v1/review``, which needs the key's ``review`` scope.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from starlette.responses import Response

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_FILES = {"review.js": "text/javascript; charset=utf-8", "review.css": "text/css; charset=utf-8"}

review_page = APIRouter(tags=["review"], include_in_schema=False)


def _read(name: str) -> bytes:
    return resources.files("zstagger.service").joinpath("review_static", name).read_bytes()


@review_page.get("/review")
def page() -> Response:
    """The review page (keyboard first; see the help it shows)."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@review_page.get("/review/static/{name}")
def static(name: str) -> Response:
    if name not in _FILES:
        return Response(b"not found", status_code=404, media_type="text/plain", headers=HEADERS)
    return Response(_read(name), media_type=_FILES[name], headers=HEADERS)
