"""GET /v1/files/<key>: images of the local storage backend, behind signed, expiring URLs.

No API key is needed (the URL is the credential, like a presigned S3 URL);
the HMAC signature covers the key and the expiry, so a URL can be neither
pointed at another image nor extended.
"""

from __future__ import annotations

from flask import Blueprint, Response, request

from api.services import services
from shared.errors import NotFound
from shared.storage.local import LocalStorage, content_type_for

bp = Blueprint("files", __name__, url_prefix="/v1/files")


@bp.get("/<path:key>")
def get_file(key: str) -> Response:
    storage = services().storage
    if not isinstance(storage, LocalStorage):
        raise NotFound("Images are served by the object store of this deployment.")
    storage.verify(key, request.args.get("expires", ""), request.args.get("signature", ""))
    data = storage.get(key)
    response = Response(data, mimetype=content_type_for(key))
    response.headers["Cache-Control"] = "private, max-age=300"
    return response
