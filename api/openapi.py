"""The OpenAPI 3.1 document of the public API, served at ``GET /openapi.json``.

Schemas come from the pydantic models that validate the request and make the
answers (:mod:`api.schemas`), emitted once under ``components/schemas``
(OpenAPI 3.1 schemas are JSON Schema 2020-12, which pydantic emits); error
responses come from the error tree of :mod:`shared.errors` (status, OpenAI
``type``, the headers each may carry). What is written here is what a schema
cannot say: paths, headers, links and prose.
``tests/test_openapi_schemathesis.py`` checks the live gateway against this
document, and that every ``/v1`` route of the app is in it.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from api.schemas import RESPONSE_MODELS, EditRequest, GenerationRequest, JobId, VariationRequest
from shared import errors
from shared.errors import ERROR_CLASSES, GatewayError, InvalidRequest

JSON = "application/json"
MULTIPART = "multipart/form-data"
_REF = "#/components/{}/{}"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": _REF.format(kind, name)}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


_JOB_ID = TypeAdapter(JobId).json_schema()


# --- request --------------------------------------------------------------------------------


class _Titleless(GenerateJsonSchema):
    """Schemas without pydantic's titles (the property and component names say it)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def generate(self, schema: Any, mode: Any = "validation") -> dict[str, Any]:
        out = super().generate(schema, mode)
        out.pop("title", None)
        return out


def generation_request_schema(default_model: str) -> dict[str, Any]:
    """The request body schema, from the pydantic model (its descriptions and examples)."""
    schema = GenerationRequest.model_json_schema(schema_generator=_Titleless)
    schema["properties"]["model"]["examples"] = [default_model]
    return schema


_BINARY = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
_IMAGE_FILE = {
    **_BINARY,
    "description": "A PNG, JPEG or WebP file of at most 8192x8192 pixels and "
    "`IMAGEGATE_MAX_UPLOAD_FILE_BYTES` (400 `invalid_image` / 413 `image_too_large` naming "
    "the part: `image`, `image[1]`, `mask`).",
}


def edit_request_schemas(default_model: str) -> dict[str, Any]:
    """The edit's JSON body, its multipart form, and the variation's form, from the
    pydantic models (:class:`EditRequest`, :class:`VariationRequest`) plus the files."""
    json_body = EditRequest.model_json_schema(
        schema_generator=_Titleless, ref_template=_REF.format("schemas", "{model}")
    )
    defs = json_body.pop("$defs", {})
    for definition in defs.values():
        definition.pop("title", None)
    json_body["properties"]["model"]["examples"] = [default_model]
    json_body["required"] = ["prompt", "images"]
    form = {
        **json_body,
        "properties": {
            name: prop
            for name, prop in json_body["properties"].items()
            if name not in ("images", "mask")
        },
    }
    form["properties"]["image"] = {
        **_IMAGE_FILE,
        "description": "The image to edit, as one file part; or send several as repeated "
        "`image` or `image[]` parts, up to the model's `max_reference_images` "
        "(`GET /v1/models`). " + _IMAGE_FILE["description"],
    }
    form["properties"]["image[]"] = {
        "type": "array",
        "items": _IMAGE_FILE,
        "maxItems": 16,
        "description": "The images to edit, in order (the mask applies to the first).",
    }
    form["properties"]["mask"] = {
        **_IMAGE_FILE,
        "description": "A PNG whose fully transparent areas mark where to edit; the size of "
        "the first image (400 `invalid_mask`). Models with `mask` only.",
    }
    form["required"] = ["prompt"]
    form["anyOf"] = [{"required": ["image"]}, {"required": ["image[]"]}]
    variation = VariationRequest.model_json_schema(schema_generator=_Titleless)
    variation["properties"]["image"] = {**_IMAGE_FILE, "description": "The image to vary."}
    variation["properties"]["model"]["examples"] = [default_model]
    variation["required"] = ["image"]
    return {
        **defs,
        "CreateImageEditRequest": json_body,
        "CreateImageEditForm": form,
        "CreateImageVariationRequest": variation,
    }


# A 1x1 PNG: the JSON edit's example runs on the default model.
_TINY_PNG = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AA"
    "AAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


# --- responses -------------------------------------------------------------------------------


class _ResponseSchema(_Titleless):
    """No ``default`` either: an answer leaves out what does not apply, nothing is defaulted."""

    def default_schema(self, schema: Any) -> dict[str, Any]:
        return self.generate_inner(schema["schema"])


def response_schemas() -> dict[str, Any]:
    """Every response body's schema, and the models they refer to, by model name."""
    _, top = models_json_schema(
        [(model, "serialization") for model in RESPONSE_MODELS],
        ref_template=_REF.format("schemas", "{model}"),
        schema_generator=_ResponseSchema,
    )
    schemas = top["$defs"]
    for schema in schemas.values():
        schema.pop("title", None)
    return schemas


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
    "Charge": {
        "description": "What this request costs the caller, in currency units with 6 "
        "decimals: the price per image (by quality, the size produced, edit or not; "
        "`pricing` in `GET /v1/models`) x the images delivered, or x `n` while the job "
        "runs (images not delivered are refunded). Absent for a job admitted without a bill.",
        "schema": {"type": "string", "pattern": r"^[0-9]+\.[0-9]{6}$"},
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
        "Charge": "x-imagegate-charge",
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


# What each error class's answers are, and the headers they may carry (see shared.errors).
_ERROR_DOCS: dict[type[GatewayError], tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    errors.InvalidRequest: (
        "Invalid request: a bad or unknown field (named in `param`), malformed JSON, a body "
        "that is not `application/json`, a field or value the model does not take, an unsafe "
        f"URL, the upstream refused the content (`code: {errors.CONTENT_POLICY_VIOLATION}`), "
        "or `n` is larger than a whole rate-limit window of the tier (`code: "
        f"{errors.N_EXCEEDS_IMAGES_PER_MINUTE}` and the like, `max_n` the largest n allowed).",
        ("UpstreamRequestId",),
        (),
    ),
    errors.AuthenticationFailed: ("Missing, wrong or revoked API key.", (), ()),
    errors.InsufficientBalance: (
        "The key's balance does not cover the images beyond the tier's free ones, or the "
        f"request would pass the key's spending cap (`code: {errors.DAILY_BUDGET_EXCEEDED}` "
        f"or `{errors.MONTHLY_BUDGET_EXCEEDED}`); nothing was charged.",
        (),
        (),
    ),
    errors.PermissionDenied: (
        "The key's tier does not include the model (the message names the tiers that do).",
        (),
        (),
    ),
    errors.NotFound: ("No such model, job or URL.", (), ()),
    errors.Conflict: (
        "Conflict: an `Idempotency-Key` reused with another body, or the job already ended.",
        (),
        (),
    ),
    errors.RequestTooLarge: (
        "The body is larger than the gateway's limit (`code: request_too_large`), an inline "
        "`image` is (`image_too_large`), or the job it makes is (`job_too_large`).",
        (),
        (),
    ),
    errors.RateLimited: (
        "A limit is reached (a tier's, or the bytes of request bodies a key may have "
        "parsed); the message and `error.limit` name it.",
        ("RetryAfter",),
        ("RetryAfter",),
    ),
    errors.ServerError: ("A gateway bug; the message carries the request id.", (), ()),
    errors.UpstreamError: (
        "The upstream failed after retries, or answered something unusable.",
        ("UpstreamRequestId",),
        (),
    ),
    errors.ServiceUnavailable: (
        "The model's family has no upstream key here (`upstream_not_configured`) or no "
        "adapter (`model_unavailable`), every candidate of a virtual model is failing, or the "
        "gateway's queue or state store is unreachable (with `Retry-After`).",
        ("RetryAfter", "ShouldRetry", "JobId"),
        (),
    ),
    errors.GatewayTimeout: (
        "The time budget ran out; `error.job_id` and `x-job-id` name the job, which can be "
        "fetched later.",
        ("JobId",),
        ("JobId",),
    ),
}

# What the HTTP server answers itself, before the app, to any URL: an oversized request
# line or header (in the same envelope and error type, see api/gunicorn_conf.py).
_TRANSPORT: dict[int, tuple[str, str]] = {
    414: (
        "UriTooLong",
        "The request line is longer than the HTTP server accepts (`code: request_line_too_large`).",
    ),
    431: (
        "HeadersTooLarge",
        "A request header is larger than the HTTP server accepts "
        "(`code: request_header_too_large`).",
    ),
}


def _error_response(
    error_type: str, description: str, headers: tuple[str, ...] = (), required=()
) -> dict[str, Any]:
    body = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "allOf": [_schema("ErrorBody"), {"properties": {"type": {"const": error_type}}}]
            }
        },
        "additionalProperties": False,
    }
    return {
        "description": description,
        "headers": _headers(*_RATE, *headers, required=required),
        "content": {JSON: {"schema": body}},
    }


def _error_responses() -> dict[str, dict[str, Any]]:
    """``components/responses``: one per error class, named after it, and the transport's."""
    out = {}
    for cls in ERROR_CLASSES:
        description, headers, required = _ERROR_DOCS[cls]
        out[cls.__name__] = _error_response(cls.error_type, description, headers, required)
    for name, description in _TRANSPORT.values():
        out[name] = _error_response(InvalidRequest.error_type, description)
    return out


_STATUS_RESPONSE = {
    **{cls.status: cls.__name__ for cls in ERROR_CLASSES},
    **{status: name for status, (name, _) in _TRANSPORT.items()},
}


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
                "`Prefer: respond-async`: answers 202 with the job object at once. "
                "With `stream: true`: Server-Sent Events; a timeout is an `error` event with "
                "`status_code: 504`.",
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
                "responses": _image_answers("generation", streams=True),
            }
        },
        **_edit_paths(default_model, request_id),
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
                "parameters": [
                    {
                        "name": "group_by",
                        "in": "query",
                        "required": False,
                        "description": "`user`: also the usage by day and end user (`users`).",
                        "schema": {"type": "string", "enum": ["user"]},
                    },
                    request_id,
                ],
                "responses": {
                    "200": _ok("Usage", "Balance, and usage by day and model."),
                    **_errors(400, 401, 500, 503),
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
                        errors.PermissionDenied.error_type,
                        "The URL's signature is not valid, or the URL has expired.",
                    ),
                    **_errors(404, 500),
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "summary": "Readiness: Redis answers, storage is writable, and every family "
                "that must be served has a live worker",
                "tags": ["operations"],
                "security": [],
                "parameters": [request_id],
                "responses": {
                    "200": {
                        "description": "Ready.",
                        "headers": _headers(),
                        "content": {JSON: {"schema": READINESS}},
                    },
                    "503": {
                        "description": "Not ready; ``missing`` names each missing piece.",
                        "headers": _headers(),
                        "content": {JSON: {"schema": READINESS}},
                    },
                    **_errors(500),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of this host's processes and the cluster",
                "tags": ["operations"],
                "security": [],
                "parameters": [request_id],
                "responses": {
                    "200": {
                        "description": "Prometheus' text exposition format 0.0.4.",
                        "headers": _headers(),
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(500),
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
        **_playground_paths(request_id),
    }


def _playground_paths(request_id: dict[str, Any]) -> dict[str, Any]:
    """``/playground``: a web page for customers, and the files it is made of."""
    return {
        "/playground": {
            "get": {
                "operationId": "playground",
                "summary": "The playground: try the API in a browser with your own key",
                "description": "A page served by the gateway (no CDN). It keeps the key in "
                "the tab's session storage and calls this API with it; its "
                "Content-Security-Policy allows scripts, styles and requests from this "
                "origin only.",
                "tags": ["pages"],
                "security": [],
                "parameters": [request_id],
                "responses": {
                    "200": {
                        "description": "The page.",
                        "headers": _headers(),
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    **_errors(500),
                },
            }
        },
        "/playground/{name}": {
            "get": {
                "operationId": "playgroundAsset",
                "summary": "A script or style sheet of the playground",
                "tags": ["pages"],
                "security": [],
                "parameters": [
                    request_id,
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "examples": ["playground.js"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "headers": _headers(),
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(404, 500),
                },
            }
        },
    }


_EVENT_STREAM = {
    "text/event-stream": {
        # One Server-Sent Event: its `event` name and its `data`, a JSON text.
        "schema": {
            "type": "object",
            "properties": {
                "event": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json"},
            },
            "required": ["data"],
            "description": "With `stream: true`: Server-Sent Events in OpenAI's shapes "
            "(`image_generation.*` for generations, `image_edit.*` for edits: partial and "
            "completed images; `error`, where a timeout has `status_code: 504`), with "
            "`: keep-alive` comments.",
        },
    }
}


def _streamed(response: dict[str, Any]) -> dict[str, Any]:
    """A 200 answer that is JSON, or Server-Sent Events when the request streams."""
    return {**response, "content": {**response["content"], **_EVENT_STREAM}}


def _image_answers(operation: str, *, streams: bool) -> dict[str, Any]:
    answer = _streamed if streams else (lambda response: response)
    return {
        "200": answer(
            _ok(
                "ImagesResponse",
                f"The images (synchronous {operation}).",
                "JobId",
                "MappedParams",
                "IgnoredParams",
                "Charge",
                required=("JobId",),
                links={
                    "GetJob": {
                        "operationId": "getGenerationJob",
                        "parameters": {"job_id": "$response.header.x-job-id"},
                    }
                },
            )
        ),
        "202": _ok(
            "Job",
            "Accepted (asynchronous request): the job object; poll `Location`.",
            "Location",
            "JobId",
            "MappedParams",
            "IgnoredParams",
            "Charge",
            required=("Location", "JobId"),
            links=_JOB_LINKS,
        ),
        **_errors(400, 401, 402, 403, 404, 409, 413, 429, 500, 502, 503, 504),
    }


def _edit_paths(default_model: str, request_id: dict[str, Any]) -> dict[str, Any]:
    parameters = [
        request_id,
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "As for generations; an upload's key compares its fields and "
            "the SHA-256 of each file.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
        },
        {
            "name": "Prefer",
            "in": "header",
            "required": False,
            "description": "`respond-async` makes the request asynchronous (202).",
            "schema": {"type": "string"},
        },
    ]
    json_example = {
        "model": default_model,
        "prompt": "add a red hat",
        "size": "64x64",
        "images": [{"image_url": _TINY_PNG}],
    }
    return {
        "/v1/images/edits": {
            "post": {
                "operationId": "createImageEdit",
                "summary": "Edit images",
                "description": "OpenAI's image edits: input images (and a mask) with a "
                "prompt, as multipart files or as JSON `images: [{image_url}]` (https or "
                "`data:` URLs; `file_id` is a 400, there is no Files API). The model needs "
                "`max_reference_images` (and `mask`) in `GET /v1/models`; a virtual model "
                "is routed to a candidate that has them. "
                "Uploads are checked before anything is charged and kept only for the job. "
                "Answers, jobs, billing and `Idempotency-Key` as for generations; "
                "`stream: true` answers Server-Sent Events (`image_edit.*`).",
                "tags": ["images"],
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {
                        MULTIPART: {
                            "schema": _schema("CreateImageEditForm"),
                            "encoding": {
                                "image": {"contentType": "image/png, image/jpeg, image/webp"},
                                "mask": {"contentType": "image/png"},
                            },
                        },
                        JSON: {
                            "schema": _schema("CreateImageEditRequest"),
                            "examples": {"data_url": {"value": json_example}},
                        },
                    },
                },
                "responses": _image_answers("edit", streams=True),
            }
        },
        "/v1/images/variations": {
            "post": {
                "operationId": "createImageVariation",
                "summary": "Make variations of an image",
                "description": "OpenAI's image variations (multipart, one file `image`), for "
                "models with `variations` in `GET /v1/models` (`dall-e-2`, `local/testcard`).",
                "tags": ["images"],
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {
                        MULTIPART: {
                            "schema": _schema("CreateImageVariationRequest"),
                            "encoding": {"image": {"contentType": "image/png"}},
                        }
                    },
                },
                "responses": _image_answers("variation", streams=False),
            }
        },
    }


READINESS = {
    "type": "object",
    "required": ["ready", "missing"],
    "properties": {
        "ready": {"type": "boolean"},
        "missing": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": False,
}


def build_openapi(*, default_model: str = "local/testcard") -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's public API."""
    from api import openapi_admin  # it builds on this module's helpers

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
            {"name": "pages"},
            {"name": "admin", "description": "The admin API (admin keys only)."},
        ],
        "security": [{"bearerAuth": []}],
        "paths": {
            **_paths(default_model),
            **openapi_admin.admin_paths(),
            **openapi_admin.console_paths(),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`ig-...`) from `imagegate keys create`.",
                },
                openapi_admin.SCHEME: openapi_admin.SECURITY_SCHEME,
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
            "responses": _error_responses(),
            "schemas": {
                "CreateImageRequest": generation_request_schema(default_model),
                **edit_request_schemas(default_model),
                **response_schemas(),
                **openapi_admin.admin_schemas(),
            },
        },
    }
