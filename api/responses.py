"""Response bodies of the web side, built by :mod:`shared.results` with this request's base URL."""

from __future__ import annotations

from typing import Any

from flask import Response, request

from api import schemas
from api.services import Services
from shared import results
from shared.jobs import Job


def base_url(svc: Services) -> str:
    """The base of image URLs in answers and webhook payloads.

    ``IMAGEGATE_PUBLIC_BASE_URL`` when set. Otherwise the request's ``Host``
    only if it is one of ``IMAGEGATE_ALLOWED_HOSTS``, else the listen address:
    a forged ``Host`` header never makes the gateway hand out URLs to another site.
    """
    settings = svc.settings
    if settings.public_base_url:
        return settings.public_base_url
    if request.host.lower() in settings.allowed_hosts:
        return request.host_url.rstrip("/")
    return settings.listen_base_url


def images_response(job: Job, svc: Services) -> dict[str, Any]:
    """The images response of a succeeded job, as :class:`api.schemas.ImagesResponse`
    says (checked like a response model; base64 images stay bytes for :func:`json_response`)."""
    body = results.images_response(
        job, svc.storage, base_url=base_url(svc), ttl=svc.settings.url_ttl_seconds
    )
    return schemas.ImagesResponse.model_validate(body).answer()


def job_object(job: Job, svc: Services) -> dict[str, Any]:
    """The job object, as :class:`api.schemas.Job` says (also what webhooks carry)."""
    body = results.job_object(
        job, svc.storage, base_url=base_url(svc), ttl=svc.settings.url_ttl_seconds
    )
    return schemas.Job.model_validate(body).answer()


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response; base64 images are spliced in as bytes (:func:`shared.results.dumps`)."""
    return Response(results.dumps(body), status=status, mimetype="application/json")
