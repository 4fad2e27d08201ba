"""The analysts' dashboard (issue 16 §4): `GET /dashboard`, a page served by the API itself, and
`GET /dashboard/static/{name}`, its script, style sheet and the vendored chart library.

The page and its files carry no data and need no key; the page reads the analysts' routes with the
key the user gives it (in the URL fragment `#key=rk_…`, which never reaches a server or its logs, or
in its key field), so every figure it shows goes through the same role check as any other client.
Nothing is loaded from another origin: the Content-Security-Policy allows scripts, styles, images
and requests from the API's own origin only, and no inline script or style.
Only the files named in `FILES` are served (no path from the request reaches the file system).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent / "static"
PAGE = STATIC / "dashboard.html"
FILES: dict[str, str] = {  # name under /dashboard/static/ -> media type
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "vendor/chart.js/chart.umd.min.js": "text/javascript; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self'", "connect-src 'self'",
    "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
))
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidated each time: a new version of Rapport is seen at once
}

router = APIRouter(tags=["dashboard"], include_in_schema=False)


@router.get("/dashboard")
def page() -> FileResponse:
    return FileResponse(PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/dashboard/static/{name:path}")
def static_file(name: str) -> FileResponse:
    media_type = FILES.get(name)
    if media_type is None:
        raise HTTPException(404, f"the dashboard has no file {name!r}")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
