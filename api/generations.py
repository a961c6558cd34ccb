"""POST /v1/images/generations: validate, enqueue, wait within the budget."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, g, jsonify, request

from api.auth import current_key
from api.responses import images_response
from api.services import services
from api.validation import check_against_model, parse_body
from shared.errors import InvalidRequest, ServiceUnavailable, error_from_dict
from shared.jobs import Job, JobStatus, new_job_id, timeout_error

log = logging.getLogger(__name__)

bp = Blueprint("generations", __name__, url_prefix="/v1/images")

# After the deadline the worker records the timeout itself; give it this long
# to do so before the web side declares the job timed out on its own.
_GRACE_SECONDS = 0.5


@bp.post("/generations")
def create_generation():
    svc = services()
    key = current_key()
    if not request.mimetype or request.mimetype != "application/json":
        raise InvalidRequest(
            "The request body must be JSON, sent with 'Content-Type: application/json'.",
            code="unsupported_content_type",
        )
    req = parse_body(request.get_data(cache=False))
    model = svc.catalog.model(req.model or svc.settings.default_model)
    family = svc.catalog.family_of(model)
    if not family.available:
        raise ServiceUnavailable(
            f"The model '{model.id}' is not available: {family.unavailable_reason}.",
            code="model_unavailable",
            headers={"x-should-retry": "false"},
        )
    if family.key_env and not svc.settings.credential(family.key_env):
        raise ServiceUnavailable(
            f"The model '{model.id}' is not available: the gateway has no upstream key for "
            f"'{family.name}' (set the environment variable {family.key_env}).",
            code="upstream_not_configured",
            headers={"x-should-retry": "false"},
        )
    tier = svc.accounts.check_model(key, model)
    job_request = check_against_model(req, model)

    now = time.time()
    job = Job(
        id=new_job_id(),
        key_id=key.id,
        model=model.id,
        family=family.name,
        queue=family.queue,
        request=job_request,
        created=now,
        deadline=now + svc.settings.sync_budget_seconds,
    )
    # Limits, balance and the job record in one atomic step (429 / 402 change nothing).
    admission = svc.accounts.admit(
        key,
        tier,
        model,
        job_request["n"],
        job_key=svc.jobs.record_key(job.id),
        job_id=job.id,
        spec_json=svc.jobs.spec_json(job),
        deadline=job.deadline,
        ttl=svc.jobs.ttl_for(job),
        now=now,
    )
    g.ratelimit = admission.status
    try:
        svc.queue.enqueue(job)
    except Exception as exc:
        error = ServiceUnavailable(
            "The job queue is unavailable; nothing was charged. Retry shortly.",
            headers={"Retry-After": "2"},
        )
        svc.jobs.fail(job.id, None, error)  # refunds the reservation
        raise error from exc
    log.info("job %s queued: key=%s model=%s n=%s", job.id, key.id, model.id, job_request["n"])

    status = svc.hub.wait(job.id, job.deadline + _GRACE_SECONDS)
    if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        svc.jobs.expire_if_overdue(job.id)
    done = svc.jobs.get(job.id)
    if done is None:
        raise timeout_error(job.id)
    if done.status == JobStatus.SUCCEEDED:
        response = jsonify(images_response(done, svc))
        response.headers["x-job-id"] = done.id
        return response
    if done.status in (JobStatus.FAILED, JobStatus.CANCELED) and done.error:
        raise error_from_dict(done.error)
    raise timeout_error(job.id)
