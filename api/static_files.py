"""A page's static file, as the playground and the console serve theirs: revalidated on
every use (``no-cache`` with an ETag, 304 when unchanged), so a new release shows at once."""

from __future__ import annotations

from pathlib import Path

from flask import Response, request


def conditional_file(path: Path, mimetype: str) -> Response:
    response = Response(path.read_bytes(), mimetype=mimetype)
    response.headers["Cache-Control"] = "no-cache"
    response.add_etag()
    return response.make_conditional(request)
