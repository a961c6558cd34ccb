"""The OpenAPI 3.1 document of the public API, served at ``GET /openapi.json``.

The request body of ``POST /v1/images/generations`` is derived from the
pydantic model that validates it (:class:`api.schemas.GenerationRequest`;
OpenAPI 3.1 schemas are JSON Schema 2020-12, which pydantic emits). Response
bodies are written out here to match what :mod:`shared.results`,
:mod:`api.models`, :mod:`api.usage` and :mod:`api.errors` really return;
``tests/test_openapi_schemathesis.py`` checks the live gateway against this
document, and that every ``/v1`` route of the app is in it.
"""

from __future__ import annotations

import copy
from typing import Any

from api.schemas import GenerationRequest
from shared.errors import ERROR_CLASSES, InvalidRequest
from shared.jobs import JobStatus
from shared.results import JOB_OBJECT

JSON = "application/json"
_REF = "#/components/{}/{}"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": _REF.format(kind, name)}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_MONEY = {"type": "string", "pattern": r"^-?[0-9]+\.[0-9]{6}$", "examples": ["0.020000"]}
_PRICE = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "examples": ["0.02", "0"]}
_SIZE = {"type": "string", "pattern": r"^[0-9]+x[0-9]+$", "examples": ["1024x1024"]}
_UNIX = {"type": "integer", "description": "Unix time in seconds."}
_JOB_ID = {"type": "string", "pattern": r"^imgjob_[0-9a-f]{24}$"}
_HEALTH = {
    "type": "string",
    "enum": ["closed", "open", "half_open"],
    "description": "State of the model's circuit breaker ('open': failing, not routed to).",
}


# --- request --------------------------------------------------------------------------------

_EXTENSION_DOCS = {
    "prompt": "What to draw. Each model has its own maximum length (`GET /v1/models`).",
    "model": "A model id from `GET /v1/models` (real or virtual). Defaults to the "
    "gateway's default model.",
    "n": "How many images (default 1); each model has its own `max_n`.",
    "size": "`WxH` or `auto`. Fitted to the model's size rule, not refused; the "
    "response's `size` says what was produced.",
    "response_format": "`url`: signed, expiring URLs served by the gateway; "
    "`b64_json`: the image bytes in base64. Default: the model's `default_response_format` "
    "(`b64_json` for GPT image models, as OpenAI; `url` for the others and virtual models).",
    "quality": "Accepted by every model: a value the model takes is sent as is, another is "
    "mapped to the model's own level (`hd` -> `high`, `high` -> `hd`, `standard` -> "
    "`medium`) or dropped; `x-imagegate-mapped-params` / `x-imagegate-ignored-params` say "
    "which. Strict mode refuses what the model does not take.",
    "style": "Accepted by every model; dropped (and listed in `x-imagegate-ignored-params`) "
    "where the model has no style, unless strict mode is on.",
    "user": "Accepted by every model and recorded on the job; sent upstream where the "
    "upstream takes it, else listed in `x-imagegate-ignored-params`, unless strict mode "
    "is on.",
    "stream": "Streaming is not supported; only `false` is accepted.",
    "aspect_ratio": "Extension: `W:H`, for models whose size rule takes a ratio.",
    "seed": "Extension: a seed, for models that take one.",
    "image": "Extension: a reference image, as an https URL or a `data:` URL "
    "(models with edit mode only). A `data:` URL must hold a PNG, JPEG or WebP image "
    "of at most 8192x8192 pixels and the gateway's byte limit (400 `invalid_image`, "
    "413 `image_too_large`).",
    "webhook_url": "Extension: an https URL that receives the job object when the job "
    "ends; makes the request asynchronous (202).",
}


def generation_request_schema(default_model: str) -> dict[str, Any]:
    """The request body schema, from the pydantic model, with descriptions and examples."""
    schema = copy.deepcopy(GenerationRequest.model_json_schema())
    schema.pop("title", None)
    schema["description"] = (
        "OpenAI's Images API request, plus the additive extensions `aspect_ratio`, `seed`, "
        "`image` and `webhook_url`. Which optional fields a model accepts, and with which "
        "values, comes from the catalog (`params` in `GET /v1/models`); others are a 400 "
        "naming the `param`, except OpenAI's tuning fields `user`, `quality` and `style`, "
        "which every model accepts (mapped or ignored) unless strict mode is on."
    )
    for name, prop in schema["properties"].items():
        prop.pop("title", None)
        if name in _EXTENSION_DOCS:
            prop["description"] = _EXTENSION_DOCS[name]
    schema["properties"]["model"]["examples"] = [default_model]
    schema["properties"]["size"]["examples"] = ["256x256", "1024x1024", "auto"]
    schema["properties"]["aspect_ratio"]["examples"] = ["16:9"]
    return schema


# --- responses -------------------------------------------------------------------------------

# The OpenAI error ``type`` of each status (one error class per status).
ERROR_TYPES: dict[int, str] = {cls.status: cls.error_type for cls in ERROR_CLASSES}

_ERROR_BODY = {
    "type": "object",
    "description": "OpenAI's error object, with the gateway's extra fields where they apply.",
    "required": ["message", "type", "param", "code"],
    "properties": {
        "message": {"type": "string"},
        "type": {"type": "string", "enum": sorted(set(ERROR_TYPES.values()))},
        "param": _nullable({"type": "string"}),
        "code": _nullable({"type": "string"}),
        "job_id": {**_JOB_ID, "description": "The job, on a 504 (fetch it later) or a 503."},
        "limit": {"type": "string", "description": "The limit that was hit, on a 429."},
    },
    "additionalProperties": True,
}

_IMAGE = {
    "type": "object",
    "properties": {
        "url": {
            "type": "string",
            "format": "uri",
            "description": "Signed URL of the stored image; expires (one hour by default).",
        },
        "b64_json": {"type": "string", "contentEncoding": "base64"},
        "revised_prompt": {"type": "string"},
    },
    "anyOf": [{"required": ["url"]}, {"required": ["b64_json"]}],
    "additionalProperties": False,
}

_IMAGES_RESPONSE = {
    "type": "object",
    "description": "OpenAI's images response, plus what was actually produced.",
    "required": ["created", "data", "model"],
    "properties": {
        "created": _UNIX,
        "data": {"type": "array", "items": _schema("Image")},
        "size": {**_SIZE, "description": "The size produced, read from the image."},
        "output_format": {"type": "string", "examples": ["png", "jpeg", "webp"]},
        "quality": {
            "type": "string",
            "enum": ["low", "medium", "high"],
            "description": "The quality the upstream reports it used (GPT image models).",
        },
        "background": {
            "type": "string",
            "enum": ["transparent", "opaque"],
            "description": "The background the upstream reports it made (GPT image models).",
        },
        "usage": {
            "type": "object",
            "description": "The upstream's token usage, as OpenAI reports it (GPT image models).",
            "properties": {
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
                "input_tokens_details": {"type": "object"},
                "output_tokens_details": {"type": "object"},
            },
        },
        "model": {"type": "string", "description": "The model id the request named."},
        "served_by": {
            **_nullable({"type": "string"}),
            "description": "Virtual models only: the real model that made the images.",
        },
    },
    "additionalProperties": False,
}

_WEBHOOK = {
    "type": "object",
    "required": ["url", "state", "attempts"],
    "properties": {
        "url": {"type": "string"},
        "state": {
            "type": "string",
            "enum": ["waiting", "pending", "retrying", "delivered", "failed", "disabled"],
        },
        "attempts": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["attempt", "at"],
                "properties": {
                    "attempt": {"type": "integer", "minimum": 1},
                    "at": _UNIX,
                    "status": {"type": "integer", "description": "The receiver's HTTP status."},
                    "error": {"type": "string"},
                    "duration_ms": {"type": "integer", "minimum": 0},
                },
            },
        },
    },
    "additionalProperties": False,
}

_JOB = {
    "type": "object",
    "description": "An image generation job (asynchronous requests, and fetching a job).",
    "required": ["id", "object", "status", "created", "model", "expires_at"],
    "properties": {
        "id": _JOB_ID,
        "object": {"const": JOB_OBJECT},
        "status": {"type": "string", "enum": [s.value for s in JobStatus]},
        "created": _UNIX,
        "model": {"type": "string"},
        "expires_at": {**_UNIX, "description": "The job's deadline."},
        "finished": _UNIX,
        "served_by": _nullable({"type": "string"}),
        "fallbacks": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Virtual models: the candidates given up, with why.",
        },
        "result": {**_schema("ImagesResponse"), "description": "When `succeeded`."},
        "error": {**_schema("ErrorBody"), "description": "When failed, timed out or canceled."},
        "status_code": {
            "type": "integer",
            "description": "The HTTP status the synchronous request would have had.",
        },
        "webhook": _schema("Webhook"),
    },
    "additionalProperties": False,
}

_MODEL_COMMON = {
    "id": {"type": "string"},
    "object": {"const": "model"},
    "created": _UNIX,
    "owned_by": {"type": "string"},
    "description": {"type": "string"},
    "price_per_image": _PRICE,
    "available": {"type": "boolean", "description": "Whether it can be used right now."},
}

_REAL_MODEL = {
    "type": "object",
    "required": [
        *_MODEL_COMMON,
        "family",
        "size_rule",
        "default_size",
        "max_n",
        "max_prompt_length",
        "response_formats",
        "default_response_format",
        "params",
        "virtual",
        "health",
    ],
    "properties": {
        **_MODEL_COMMON,
        "family": {"type": "string", "description": "The upstream family serving it."},
        "size_rule": {
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {
                    "type": "string",
                    "enum": [
                        "fixed",
                        "max_side",
                        "area_band",
                        "range_multiple",
                        "passthrough",
                        "aspect_ratio",
                    ],
                }
            },
            "description": "How requested sizes are fitted to what the model makes.",
        },
        "default_size": _SIZE,
        "max_n": {"type": "integer", "minimum": 1},
        "max_prompt_length": {"type": "integer", "minimum": 1},
        "response_formats": {
            "type": "array",
            "items": {"type": "string", "enum": ["url", "b64_json"]},
        },
        "default_response_format": {
            "type": "string",
            "enum": ["url", "b64_json"],
            "description": "What the model answers without `response_format` "
            "(`b64_json` for GPT image models, as OpenAI does).",
        },
        "params": {
            "type": "array",
            "items": {"type": "string"},
            "description": "The optional request fields this model accepts.",
        },
        "unavailable_reason": {"type": "string"},
        "virtual": {"const": False},
        "health": _HEALTH,
    },
    "additionalProperties": False,
}

_VIRTUAL_MODEL = {
    "type": "object",
    "required": [*_MODEL_COMMON, "virtual", "candidates"],
    "properties": {
        **_MODEL_COMMON,
        "virtual": {"const": True},
        "candidates": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["model", "weight", "params", "available", "health"],
                "properties": {
                    "model": {"type": "string"},
                    "weight": {"type": "number"},
                    "params": {"type": "object", "description": "Request fields it overrides."},
                    "available": {"type": "boolean"},
                    "health": _HEALTH,
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}

_USAGE_ROW = {
    "type": "object",
    "required": ["model", "images", "amount"],
    "properties": {
        "day": {"type": "string", "format": "date"},
        "model": {"type": "string"},
        "images": {"type": "integer"},
        "amount": _MONEY,
    },
    "additionalProperties": False,
}

_USAGE = {
    "type": "object",
    "required": ["object", "key_id", "tier", "balance", "data", "totals"],
    "properties": {
        "object": {"const": "usage"},
        "key_id": {"type": "string"},
        "tier": {"type": "string"},
        "balance": {
            "anyOf": [_MONEY, {"const": "unlimited"}],
            "description": "Currency units with 6 decimals, or `unlimited`.",
        },
        "data": {
            "type": "array",
            "items": {**_USAGE_ROW, "required": ["day", *_USAGE_ROW["required"]]},
            "description": "By UTC day and model.",
        },
        "totals": {"type": "array", "items": _USAGE_ROW, "description": "By model."},
    },
    "additionalProperties": False,
}


# --- headers ---------------------------------------------------------------------------------

_HEADERS: dict[str, dict[str, Any]] = {
    "RequestId": {
        "description": "The request's id: the client's `x-request-id` if it was valid, "
        "else one the gateway made. Quote it when reporting a problem.",
        "required": True,
        "schema": {"type": "string", "pattern": r"^[A-Za-z0-9._:-]{1,128}$"},
    },
    "RateLimitLimit": {
        "description": "Limit of the tightest window (images for model windows, calls for "
        "the account window). Sent when the key's tier has limits.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimitRemaining": {
        "description": "What is left of that window.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "RateLimitReset": {
        "description": "When that window resets, in OpenAI's style (`250ms`, `37s`, `1m30s`).",
        "schema": {"type": "string", "pattern": r"^([0-9]+ms|([0-9]+h)?([0-9]+m)?[0-9]+s)$"},
    },
    "RetryAfter": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "JobId": {"description": "The job of this request.", "schema": _JOB_ID},
    "UpstreamRequestId": {
        "description": "The upstream provider's request id, when it gave one.",
        "schema": {"type": "string"},
    },
    "ShouldRetry": {
        "description": "`false` when retrying cannot help (the model is not configured here).",
        "schema": {"type": "string", "enum": ["true", "false"]},
    },
    "MappedParams": {
        "description": "OpenAI tuning fields (`quality`) the model takes under another value, "
        "as `field=asked->sent`, comma-separated, e.g. `quality=hd->high`. Absent when none "
        "was mapped, and in strict mode (`IMAGEGATE_STRICT_PARAMS` or the key's flag), which "
        "refuses such fields with a 400 instead.",
        "schema": {"type": "string", "examples": ["quality=hd->high"]},
    },
    "IgnoredParams": {
        "description": "OpenAI tuning fields (`user`, `quality`, `style`) the model has no "
        "knob for, comma-separated: not sent upstream (`user` is still recorded on the job). "
        "Absent when none was ignored, and in strict mode.",
        "schema": {"type": "string", "examples": ["style, user"]},
    },
    "Location": {
        "description": "Where to poll the job.",
        "required": True,
        "schema": {"type": "string", "pattern": r"^/v1/images/generations/imgjob_[0-9a-f]{24}$"},
    },
}


def _headers(*names: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    names = ("RequestId", *names)
    wire = {
        "RequestId": "x-request-id",
        "RateLimitLimit": "x-ratelimit-limit-requests",
        "RateLimitRemaining": "x-ratelimit-remaining-requests",
        "RateLimitReset": "x-ratelimit-reset-requests",
        "RetryAfter": "Retry-After",
        "JobId": "x-job-id",
        "UpstreamRequestId": "x-upstream-request-id",
        "ShouldRetry": "x-should-retry",
        "MappedParams": "x-imagegate-mapped-params",
        "IgnoredParams": "x-imagegate-ignored-params",
        "Location": "Location",
    }
    out: dict[str, Any] = {}
    for name in names:
        if name in required:
            out[wire[name]] = {**_HEADERS[name], "required": True}
        else:
            out[wire[name]] = _ref("headers", name)
    return out


_RATE = ("RateLimitLimit", "RateLimitRemaining", "RateLimitReset")


def _error_response(
    status: int,
    description: str,
    *headers: str,
    required: tuple[str, ...] = (),
    error_type: str | None = None,
) -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "allOf": [
                    _schema("ErrorBody"),
                    {"properties": {"type": {"const": error_type or ERROR_TYPES[status]}}},
                ]
            }
        },
        "additionalProperties": False,
    }
    return {
        "description": description,
        "headers": _headers(*_RATE, *headers, required=required),
        "content": {JSON: {"schema": body}},
    }


_ERRORS: dict[str, dict[str, Any]] = {
    "BadRequest": _error_response(
        400,
        "Invalid request: a bad or unknown field (named in `param`), malformed JSON, a body "
        "that is not `application/json`, a field the model does not take, an unsafe URL, or "
        "the upstream refused the content (`code: content_policy_violation`).",
        "UpstreamRequestId",
    ),
    "Unauthorized": _error_response(401, "Missing, wrong or revoked API key."),
    "PaymentRequired": _error_response(
        402, "The key's balance does not cover `price x n`; nothing was charged."
    ),
    "Forbidden": _error_response(
        403, "The key's tier does not include the model (the message names the tiers that do)."
    ),
    "NotFound": _error_response(404, "No such model, job or URL."),
    "Conflict": _error_response(
        409, "Conflict: an `Idempotency-Key` reused with another body, or the job already ended."
    ),
    "PayloadTooLarge": _error_response(
        413,
        "The body is larger than the gateway's limit (`code: request_too_large`), an inline "
        "`image` is (`image_too_large`), or the job it makes is (`job_too_large`).",
    ),
    "UriTooLong": _error_response(
        414,
        "The request line is longer than the HTTP server accepts (`code: request_line_too_large`).",
        error_type=InvalidRequest.error_type,
    ),
    "HeadersTooLarge": _error_response(
        431,
        "A request header is larger than the HTTP server accepts (`code: "
        "request_header_too_large`).",
        error_type=InvalidRequest.error_type,
    ),
    "TooManyRequests": _error_response(
        429,
        "A tier limit is reached; the message and `error.limit` name it.",
        "RetryAfter",
        required=("RetryAfter",),
    ),
    "InternalServerError": _error_response(
        500, "A gateway bug; the message carries the request id."
    ),
    "BadGateway": _error_response(
        502,
        "The upstream failed after retries, or answered something unusable.",
        "UpstreamRequestId",
    ),
    "ServiceUnavailable": _error_response(
        503,
        "The model's family has no upstream key here (`upstream_not_configured`) or no "
        "adapter (`model_unavailable`), every candidate of a virtual model is failing, or the "
        "gateway's queue or state store is unreachable (with `Retry-After`).",
        "RetryAfter",
        "ShouldRetry",
        "JobId",
    ),
    "GatewayTimeout": _error_response(
        504,
        "The time budget ran out; `error.job_id` and `x-job-id` name the job, which can be "
        "fetched later.",
        "JobId",
        required=("JobId",),
    ),
}

_STATUS_RESPONSE = {
    400: "BadRequest",
    401: "Unauthorized",
    402: "PaymentRequired",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    413: "PayloadTooLarge",
    414: "UriTooLong",
    429: "TooManyRequests",
    431: "HeadersTooLarge",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


# What the HTTP server answers itself, before the app, to any URL: an oversized
# request line or header (in the same envelope, see api/gunicorn_conf.py).
_TRANSPORT = (414, 431)


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): _ref("responses", _STATUS_RESPONSE[s]) for s in sorted({*statuses, *_TRANSPORT})
    }


def _ok(
    schema: str,
    description: str,
    *headers: str,
    required: tuple[str, ...] = (),
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    response = {
        "description": description,
        "headers": _headers(*_RATE, *headers, required=required),
        "content": {JSON: {"schema": _schema(schema)}},
    }
    if links:
        response["links"] = links
    return response


# --- operations ------------------------------------------------------------------------------

_JOB_LINKS = {
    "GetJob": {
        "operationId": "getGenerationJob",
        "parameters": {"job_id": "$response.body#/id"},
    },
    "CancelJob": {
        "operationId": "cancelGenerationJob",
        "parameters": {"job_id": "$response.body#/id"},
    },
}


def _paths(default_model: str) -> dict[str, Any]:
    job_id_param = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": "A job id, `imgjob_...`, from a 202 or `x-job-id`.",
        "schema": {"type": "string"},
    }
    request_id = _ref("parameters", "RequestId")
    example = {"model": default_model, "prompt": "a red fox in the snow", "size": "256x256"}
    return {
        "/v1/images/generations": {
            "post": {
                "operationId": "createImage",
                "summary": "Generate images",
                "description": "Synchronous by default: answers the images (200) once they "
                "are ready, or 504 with the job id when the time budget runs out. "
                "Asynchronous when the body has `webhook_url` or the request says "
                "`Prefer: respond-async`: answers 202 with the job object at once.",
                "tags": ["images"],
                "parameters": [
                    request_id,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "Retrying with the same key and body returns the same "
                        "job instead of a new (charged) one; the same key with another body "
                        "is a 409. Kept for a day by default.",
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                    },
                    {
                        "name": "Prefer",
                        "in": "header",
                        "required": False,
                        "description": "`respond-async` makes the request asynchronous (202).",
                        "schema": {"type": "string"},
                        "examples": {"async": {"value": "respond-async"}},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        JSON: {
                            "schema": _schema("CreateImageRequest"),
                            "examples": {
                                "default": {"value": example},
                                "b64": {
                                    "value": {
                                        **example,
                                        "n": 2,
                                        "size": "64x64",
                                        "response_format": "b64_json",
                                    }
                                },
                            },
                        }
                    },
                },
                "responses": {
                    "200": _ok(
                        "ImagesResponse",
                        "The images (synchronous request).",
                        "JobId",
                        "MappedParams",
                        "IgnoredParams",
                        required=("JobId",),
                        links={
                            "GetJob": {
                                "operationId": "getGenerationJob",
                                "parameters": {"job_id": "$response.header.x-job-id"},
                            }
                        },
                    ),
                    "202": _ok(
                        "Job",
                        "Accepted (asynchronous request): the job object; poll `Location`.",
                        "Location",
                        "JobId",
                        "MappedParams",
                        "IgnoredParams",
                        required=("Location", "JobId"),
                        links=_JOB_LINKS,
                    ),
                    **_errors(400, 401, 402, 403, 404, 409, 413, 429, 500, 502, 503, 504),
                },
            }
        },
        "/v1/images/generations/{job_id}": {
            "get": {
                "operationId": "getGenerationJob",
                "summary": "Fetch a job",
                "description": "The job object; with the images (`result`) once it succeeded. "
                "URLs are signed afresh on every fetch. Another key's job is a 404.",
                "tags": ["images"],
                "parameters": [job_id_param, request_id],
                "responses": {
                    "200": _ok("Job", "The job."),
                    **_errors(401, 404, 500, 503),
                },
            }
        },
        "/v1/images/generations/{job_id}/cancel": {
            "post": {
                "operationId": "cancelGenerationJob",
                "summary": "Cancel a job",
                "description": "Cancels a job that has not ended and refunds it; a job that "
                "already ended is a 409.",
                "tags": ["images"],
                "parameters": [job_id_param, request_id],
                "responses": {
                    "200": _ok("Job", "The canceled job."),
                    **_errors(401, 404, 409, 500, 503),
                },
            }
        },
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "List models",
                "description": "Every model of the catalog, virtual ones first, with what "
                "the gateway knows of each and whether it can be used now.",
                "tags": ["models"],
                "parameters": [request_id],
                "responses": {
                    "200": _ok("ModelList", "The models."),
                    **_errors(401, 500, 503),
                },
            }
        },
        "/v1/models/{model_id}": {
            "get": {
                "operationId": "retrieveModel",
                "summary": "Describe a model",
                "tags": ["models"],
                "parameters": [
                    {
                        "name": "model_id",
                        "in": "path",
                        "required": True,
                        "description": "A model id; it may contain `/` (e.g. `local/testcard`).",
                        "schema": {"type": "string"},
                        "examples": {"default": {"value": default_model}},
                    },
                    request_id,
                ],
                "responses": {
                    "200": _ok("Model", "The model."),
                    **_errors(401, 404, 500, 503),
                },
            }
        },
        "/v1/usage": {
            "get": {
                "operationId": "getUsage",
                "summary": "Balance and usage of the calling key",
                "tags": ["account"],
                "parameters": [request_id],
                "responses": {
                    "200": _ok("Usage", "Balance, and usage by day and model."),
                    **_errors(401, 500, 503),
                },
            }
        },
        "/v1/files/{key}": {
            "get": {
                "operationId": "getFile",
                "summary": "Download a stored image",
                "description": "The image URLs of the local storage backend. The signed URL "
                "is the credential: no API key. With an object store (S3), images are served "
                "by the store and this is a 404.",
                "tags": ["images"],
                "security": [],
                "parameters": [
                    {
                        "name": "key",
                        "in": "path",
                        "required": True,
                        "description": "The stored image's key; it contains `/`.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "expires",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                    },
                    {
                        "name": "signature",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                    },
                    request_id,
                ],
                "responses": {
                    "200": {
                        "description": "The image.",
                        "headers": _headers(),
                        "content": {
                            media: {"schema": {"type": "string", "contentMediaType": media}}
                            for media in (
                                "image/png",
                                "image/jpeg",
                                "image/webp",
                                "application/octet-stream",
                            )
                        },
                    },
                    "403": _error_response(
                        403, "The URL's signature is not valid, or the URL has expired."
                    ),
                    **_errors(404, 500),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the web process is up and reaches Redis",
                "tags": ["operations"],
                "security": [],
                "parameters": [request_id],
                "responses": {
                    "200": {
                        "description": "Healthy.",
                        "headers": _headers(),
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["ok"],
                                    "properties": {"ok": {"const": True}},
                                    "additionalProperties": False,
                                }
                            }
                        },
                    },
                    **_errors(500, 503),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["operations"],
                "security": [],
                "parameters": [request_id],
                "responses": {
                    "200": {
                        "description": "The OpenAPI 3.1 document of this API.",
                        "headers": _headers(),
                        "content": {JSON: {"schema": {"type": "object"}}},
                    },
                    **_errors(500),
                },
            }
        },
    }


def build_openapi(*, default_model: str = "local/testcard") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's public API."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "imagegate",
            "version": "0.1.0",
            "summary": "OpenAI-compatible image-generation gateway",
            "description": "OpenAI's Images API in front of many upstream providers. Errors "
            'use OpenAI\'s envelope `{"error": {"message", "type", "param", "code"}}`; '
            "every response carries `x-request-id`.",
        },
        "tags": [
            {"name": "images"},
            {"name": "models"},
            {"name": "account"},
            {"name": "operations"},
        ],
        "security": [{"bearerAuth": []}],
        "paths": _paths(default_model),
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`ig-...`) from `imagegate keys create`.",
                }
            },
            "parameters": {
                "RequestId": {
                    "name": "x-request-id",
                    "in": "header",
                    "required": False,
                    "description": "Your own request id. Any value is accepted; it is "
                    "echoed back when it is 1 to 128 of `A-Za-z0-9._:-`, otherwise the "
                    "gateway makes one.",
                    "schema": {"type": "string", "examples": ["req-2026-11-21-0001"]},
                }
            },
            "headers": _HEADERS,
            "responses": _ERRORS,
            "schemas": {
                "CreateImageRequest": generation_request_schema(default_model),
                "Image": _IMAGE,
                "ImagesResponse": _IMAGES_RESPONSE,
                "Job": _JOB,
                "Webhook": _WEBHOOK,
                "Model": {"oneOf": [_schema("RealModel"), _schema("VirtualModel")]},
                "RealModel": _REAL_MODEL,
                "VirtualModel": _VIRTUAL_MODEL,
                "ModelList": {
                    "type": "object",
                    "required": ["object", "data"],
                    "properties": {
                        "object": {"const": "list"},
                        "data": {"type": "array", "items": _schema("Model")},
                    },
                    "additionalProperties": False,
                },
                "Usage": _USAGE,
                "ErrorBody": _ERROR_BODY,
            },
        },
    }
