"""Response bodies of the web side, built by :mod:`shared.results` with this request's base URL."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from api.services import Services
from shared import results
from shared.jobs import Job


def base_url(svc: Services) -> str:
    return svc.settings.public_base_url or request.host_url.rstrip("/")


def images_response(job: Job, svc: Services) -> dict[str, Any]:
    return results.images_response(
        job, svc.storage, base_url=base_url(svc), ttl=svc.settings.url_ttl_seconds
    )


def job_object(job: Job, svc: Services) -> dict[str, Any]:
    return results.job_object(
        job, svc.storage, base_url=base_url(svc), ttl=svc.settings.url_ttl_seconds
    )


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response; base64 images are spliced in as bytes (:func:`shared.results.dumps`)."""
    return Response(results.dumps(body), status=status, mimetype="application/json")
