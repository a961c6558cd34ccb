"""What the browser-facing routes share: the headers that keep a browser from sniffing,
framing or leaking them (:data:`BROWSER_HEADERS`, :data:`PAGE_HEADERS`), and a page's
static file as the playground and the console serve theirs: revalidated on every use
(``no-cache`` with an ETag, 304 when unchanged), so a new release shows at once."""

from __future__ import annotations

from pathlib import Path

from flask import Response, request

# Every answer a browser may read: no type sniffing, no framing, no Referer leaving it.
BROWSER_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
# The pages (console, playground): also kept apart from other sites' windows and loads.
# Each adds its own Content-Security-Policy.
PAGE_HEADERS = {
    **BROWSER_HEADERS,
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def conditional_file(path: Path, mimetype: str) -> Response:
    response = Response(path.read_bytes(), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"
    response.add_etag()
    return response.make_conditional(request)
