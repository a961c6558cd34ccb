"""The body a finished job returns: OpenAI's ImagesResponse.

URLs are signed afresh on every call, so a job fetched later gets URLs that
live a full ``url_ttl_seconds`` from then.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import request

from api.services import Services
from shared.jobs import Job


def images_response(job: Job, svc: Services) -> dict[str, Any]:
    response_format = job.request.get("response_format", "url")
    base_url = svc.settings.public_base_url or request.host_url.rstrip("/")
    data = []
    for image in job.images:
        item: dict[str, Any]
        if response_format == "b64_json":
            item = {"b64_json": base64.b64encode(svc.storage.get(image.key)).decode("ascii")}
        else:
            item = {
                "url": svc.storage.url(image.key, svc.settings.url_ttl_seconds, base_url=base_url)
            }
        if image.revised_prompt:
            item["revised_prompt"] = image.revised_prompt
        data.append(item)
    body: dict[str, Any] = {"created": int(job.created), "data": data}
    if job.images:
        body["size"] = job.images[0].size
        body["output_format"] = job.images[0].content_type.rsplit("/", 1)[-1]
    body["model"] = job.model
    return body
