"""The gateway's error tree.

Every failure a client can see is one of these classes. Each carries its HTTP
status and OpenAI error ``type``; ``api/errors.py`` renders them into OpenAI's
envelope ``{"error": {"message", "type", "param", "code"}}`` in one place.
Workers store failures in the job record with :meth:`GatewayError.to_dict`
and the API raises them again with :func:`error_from_dict`, so a failure
looks the same whether it happened in the web process or in a worker.

Foreign errors (requests, boto3, redis, pydantic) are translated once, at the
boundary where they occur, with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any, ClassVar

# -- codes -----------------------------------------------------------------------------
# The ``code`` of a request fault, one name per fault wherever it is detected
# (api/validation.py before the job is queued, an adapter after). OpenAI's own
# codes where OpenAI has one for the fault.

UNKNOWN_PARAMETER = "unknown_parameter"
"""400: a field the endpoint does not have at all (OpenAI's code)."""
MISSING_REQUIRED_PARAMETER = "missing_required_parameter"
"""400: a required field is absent (OpenAI's code)."""
UNSUPPORTED_PARAMETER = "unsupported_parameter"
"""400: a field the endpoint has but this model does not take (OpenAI's code)."""
INVALID_VALUE = "invalid_value"
"""400: a value of the wrong type, outside its range or outside the model's choices
(OpenAI's code; also where adapters once said ``unsupported_value``)."""
INVALID_IMAGE = "invalid_image"
"""400: the reference ``image`` is not a URL or data URL the model can take."""
IMAGE_TOO_LARGE = "image_too_large"
"""400: the reference ``image`` is larger than the upstream accepts."""
CONTENT_POLICY_VIOLATION = "content_policy_violation"
"""400: the upstream's moderation refused the prompt or image (OpenAI's code)."""
CATALOG_MISCONFIGURED = "catalog_misconfigured"
"""500: the model's catalog entry cannot be served (once also ``catalog_error``);
:func:`workers.adapters.validate_catalog` stops a deployment before one is served."""
UPSTREAM_MALFORMED_RESPONSE = "upstream_malformed_response"
"""502: the upstream answered something that is not what its protocol promises."""
STORAGE_FULL = "storage_full"
"""503: the gateway's local image storage has no room left (disk full, quota, file-size
limit); the job fails and is refunded in full (:mod:`shared.storage.local`)."""
N_EXCEEDS_IMAGES_PER_MINUTE = "n_exceeds_images_per_minute"
"""400: ``n`` is larger than the tier's whole per-minute limit of the model (``max_n`` in
the error says the largest n allowed); a 429 could never help."""
N_EXCEEDS_IMAGES_PER_DAY = "n_exceeds_images_per_day"
"""400: ``n`` is larger than the tier's whole per-day limit of the model (``max_n``)."""
N_EXCEEDS_USER_IMAGES_PER_MINUTE = "n_exceeds_user_images_per_minute"
"""400: ``n`` is larger than the tier's per-end-user (``user``) limit a minute (``max_n``)."""
N_EXCEEDS_USER_IMAGES_PER_DAY = "n_exceeds_user_images_per_day"
"""400: ``n`` is larger than the tier's per-end-user (``user``) limit a day (``max_n``)."""
DAILY_BUDGET_EXCEEDED = "daily_budget_exceeded"
"""402: the request would take the key beyond its spending cap of the UTC day."""
MONTHLY_BUDGET_EXCEEDED = "monthly_budget_exceeded"
"""402: the request would take the key beyond its spending cap of the UTC month."""
PRICED_BELOW_COST = "priced_below_cost"
"""503: no candidate of a virtual model serves the request at or below its price."""


class GatewayError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
        }
        body.update(self.extra)
        return {"error": body}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form for job records (see :func:`error_from_dict`)."""
        return {
            "status": self.status,
            "message": self.message,
            "type": self.error_type,
            "param": self.param,
            "code": self.code,
            "headers": self.headers,
            "extra": self.extra,
        }


class InvalidRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class InsufficientBalance(GatewayError):
    status = 402
    error_type = "insufficient_balance"
    default_code = "insufficient_balance"


class PermissionDenied(GatewayError):
    status = 403
    error_type = "permission_error"


class NotFound(GatewayError):
    status = 404
    error_type = "not_found_error"


class Conflict(GatewayError):
    status = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class RequestTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class ServerError(GatewayError):
    status = 500
    error_type = "server_error"


class UpstreamError(GatewayError):
    """The upstream provider failed or answered something we cannot use."""

    status = 502
    error_type = "upstream_error"
    default_code = "upstream_error"

    def __init__(self, message: str, *, upstream_request_id: str | None = None, **kw: Any):
        super().__init__(message, **kw)
        if upstream_request_id:
            self.headers.setdefault("x-upstream-request-id", upstream_request_id)


class ServiceUnavailable(GatewayError):
    status = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class GatewayTimeout(GatewayError):
    """The job's deadline passed. ``extra['job_id']`` names the job."""

    status = 504
    error_type = "timeout_error"
    default_code = "timeout"


def content_policy_violation(
    message: str, *, upstream_request_id: str | None = None
) -> InvalidRequest:
    """The one shape every upstream's moderation refusal takes: 400 content_policy_violation."""
    return InvalidRequest(
        message,
        code=CONTENT_POLICY_VIOLATION,
        headers={"x-upstream-request-id": upstream_request_id} if upstream_request_id else None,
    )


class DeadlineExceeded(Exception):
    """Raised inside workers when a job's deadline has passed.

    Not a :class:`GatewayError`: the task turns it into a ``timed_out`` job,
    and the API answers :class:`GatewayTimeout` with the job id.
    """


# Every error class a client can receive, one per (status, OpenAI error type).
ERROR_CLASSES: tuple[type[GatewayError], ...] = (
    InvalidRequest,
    AuthenticationFailed,
    InsufficientBalance,
    PermissionDenied,
    NotFound,
    Conflict,
    RequestTooLarge,
    RateLimited,
    ServerError,
    UpstreamError,
    ServiceUnavailable,
    GatewayTimeout,
)

_BY_TYPE_AND_STATUS: dict[tuple[int, str], type[GatewayError]] = {
    (cls.status, cls.error_type): cls for cls in ERROR_CLASSES
}


def error_from_dict(data: dict[str, Any]) -> GatewayError:
    """Rebuild an error stored by :meth:`GatewayError.to_dict`."""
    cls = _BY_TYPE_AND_STATUS.get(
        (int(data.get("status", 500)), str(data.get("type"))), ServerError
    )
    err = GatewayError.__new__(cls)
    GatewayError.__init__(
        err,
        str(data.get("message", "")),
        param=data.get("param"),
        code=data.get("code"),
        headers=data.get("headers") or {},
        extra=data.get("extra") or {},
    )
    return err
