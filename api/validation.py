"""From raw request bytes to a request the chosen model can honour.

Before parsing, a body holding far more JSON punctuation than any request needs is
refused (:func:`parse_body`'s ``max_tokens``, from :func:`json_budget`).

Two steps: :func:`parse_body` checks the body against OpenAI's schema
(:class:`api.schemas.GenerationRequest`), then :func:`check_against_model`
applies the model's limits from the catalog (n, prompt length, response
formats, which optional fields it takes and their values, size syntax).
Everything it rejects is an :class:`InvalidRequest` naming the ``param``, with the
request-fault codes of :mod:`shared.errors` (``UNSUPPORTED_PARAMETER``,
``INVALID_VALUE``, ...) that the adapters use too. This is where the catalog's
``params`` and ``choices`` are enforced, for every candidate of a virtual model
as well (:func:`api.routing.plan`), before a job is admitted or queued: an
adapter refusing a field later means the catalog entry says less than the
upstream's rules.

Before that, unless strict mode is on (``IMAGEGATE_STRICT_PARAMS`` or the key's
``strict_params`` flag), :func:`fit_tuning` fits OpenAI clients' tuning fields
(``user``, ``quality``, ``style``; :data:`shared.catalog.TUNING_PARAMS`) to the
model: a value the model takes is kept, another is mapped onto the model's own
choices (``hd`` -> ``high`` on GPT image models, ``high`` -> ``hd`` on dall-e-3)
or dropped, and a field the model has no knob for is dropped. What was mapped
and dropped is returned as :class:`ParamNotes`, which the response lists in its
``x-imagegate-mapped-params`` and ``x-imagegate-ignored-params`` headers. Only
these fields are fitted: losing any other one (a transparent background, an
output format, ...) would change what the client gets, so it is still refused.

Edits and variations go through the same steps: :func:`parse_body` with
``model=EditRequest`` (the JSON form; the multipart form is read by
:mod:`api.uploads` and validated with :func:`validate_fields`), then
:func:`check_against_model`; a variation, which has no prompt, is checked by
:func:`check_variation`.

Sizes are only *parsed* here; fitting them to the model's rule (clamping) is
the worker's job, so what the upstream receives is decided in one place.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import has_request_context, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import RequestEntityTooLarge

from api.schemas import GenerationRequest, VariationRequest
from shared.catalog import QUALITY_LEVELS, TUNING_PARAMS, Catalog, Model
from shared.errors import (
    INVALID_VALUE,
    MISSING_REQUIRED_PARAMETER,
    UNKNOWN_PARAMETER,
    UNSUPPORTED_PARAMETER,
    InvalidRequest,
)
from shared.sizing import parse_aspect_ratio, parse_size

# Room for the JSON punctuation of every field but the prompt (keys, webhook_url, user,
# model, size ...), in :func:`json_budget`.
_FIELDS_ROOM = 4096
# An inline reference image: the one string of a request that may be megabytes long.
_DATA_URL_START = b'"data:'
_PUNCTUATION = (b":", b",", b"{", b"[")  # the commonest first: counting stops once over


def json_budget(catalog: Catalog) -> int:
    """How many ``{ [ , :`` bytes a body may hold (:func:`parse_body`'s ``max_tokens``).

    A request is a flat object of about twenty fields; only the prompt may hold
    many of these characters (one per character at most), so the budget is the
    longest prompt any model takes plus room for the other fields.
    """
    longest = max((m.max_prompt_length for m in catalog.models.values()), default=0)
    return longest + _FIELDS_ROOM


_Request = TypeVar("_Request", bound=BaseModel)


def parse_body(
    body: bytes,
    *,
    max_tokens: int | None = None,
    charge: Callable[[int], None] | None = None,
    model: type[_Request] = GenerationRequest,  # type: ignore[assignment]
) -> _Request:
    """The request in ``body`` (a ``model``, by default a :class:`GenerationRequest`);
    400 naming the param for what the schema refuses.

    With ``max_tokens``, a body that holds more JSON punctuation than that outside an
    inline image is refused before it is parsed (:func:`_reject_costly_json`). Once
    these cheap checks passed, ``charge`` is called with the body's length before
    parsing, and may refuse it (:class:`api.parse_limit.ParseLimit`: 429).
    """
    _reject_cut_body(body)
    image = _data_url_span(body)
    if max_tokens is not None:
        _reject_costly_json(body, image, max_tokens)
    if charge is not None:
        charge(len(body))
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise _translate(exc) from None
    if image is not None:
        # The duplicate check need not read the image a second time.
        start, end = image
        body = body[: start + len(_DATA_URL_START)] + body[end:]
    _reject_duplicate_keys(body)
    return parsed


def _data_url_span(body: bytes) -> tuple[int, int] | None:
    """Where the first ``"data:...`` string of ``body`` runs (up to the next ``"``), or None.

    With no ``"`` inside the span, a parser is inside one string all along it, or
    stops at a syntax error where it starts (``"`` then ``data:`` outside a string):
    skipping it hides no tokens. Base64 and percent-encoded data hold no ``"``.
    """
    start = body.find(_DATA_URL_START)
    if start < 0:
        return None
    end = body.find(b'"', start + 1)
    return (start, end) if end >= 0 else None


def _reject_costly_json(body: bytes, image: tuple[int, int] | None, max_tokens: int) -> None:
    """400 for a body whose parse would cost far more than any request needs.

    Parsing costs per token, not per byte: a 7.5 MB body of 1.25 M duplicate keys
    took 0.27 s to parse and refuse, a 14 MB body of one image string 4 ms. So
    the bytes that make tokens -- ``{ [ , :`` -- are counted (``bytes.count``, about
    1 ms per MB, stopping once over) outside the inline image, before any parsing;
    this also bounds the nesting depth. Strings hold such bytes too, so the count
    is an upper bound, and :func:`json_budget` leaves room for a prompt made of them.
    """
    if len(body) <= max_tokens:
        return  # it cannot hold more
    start, end = image if image is not None else (len(body), len(body))
    count = 0
    for char in _PUNCTUATION:
        count += body.count(char, 0, start) + body.count(char, end)
        if count > max_tokens:
            break
    if count > max_tokens:
        raise InvalidRequest(
            f"The JSON body holds {count} of the characters {{ [ , : outside an inline "
            f"image; a request needs at most {max_tokens}. Send one flat object of the "
            "documented fields.",
            code="json_too_complex",
        )


def _reject_cut_body(body: bytes) -> None:
    """413 for a body that werkzeug cut short at ``MAX_CONTENT_LENGTH``.

    A body whose Content-Length is above the limit is refused before it is read,
    but one sent without it (chunked) is read up to the limit and then silently
    cut, so a 20 MB upload became a 400 about truncated JSON (or, worse, a
    truncated body that still parses). When a body without Content-Length fills
    the limit, one more byte on the wire means it was cut.
    """
    if not has_request_context():
        return
    limit = request.max_content_length
    if limit is None or request.content_length is not None or len(body) < limit:
        return
    if request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def _reject_duplicate_keys(body: bytes) -> None:
    """400 for a body that names a field twice.

    JSON parsers disagree on which of two values wins (pydantic takes the last,
    others the first), so a proxy or log and the gateway could read different
    requests from the same bytes. A body that passed the schema is a flat object
    of scalars, so parsing it once more is cheap and cannot recurse deeply.
    """

    def pairs_hook(pairs: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise InvalidRequest(
                    f"The parameter '{name}' appears more than once in the request body.",
                    param=name,
                    code="duplicate_parameter",
                )
            seen.add(name)

    try:
        json.loads(body, object_pairs_hook=pairs_hook)
    except ValueError:  # pragma: no cover - pydantic already accepted this JSON
        return


def validate_fields(fields: Mapping[str, Any], model: type[_Request]) -> _Request:
    """``fields`` (already typed: see :mod:`api.uploads`) as a ``model``; 400 naming the
    param for what the schema refuses, as :func:`parse_body`."""
    try:
        return model.model_validate(dict(fields))
    except ValidationError as exc:
        raise _translate(exc) from None


def _param_of(loc: Sequence[Any]) -> str | None:
    """``images[0].image_url`` for a nested location, the field's name for a flat one."""
    if not loc:
        return None
    param = str(loc[0])
    for part in loc[1:]:
        param += f"[{part}]" if isinstance(part, int) else f".{part}"
    return param


def _translate(exc: ValidationError) -> InvalidRequest:
    first = exc.errors(include_url=False)[0]
    kind = first.get("type", "")
    loc = first.get("loc") or ()
    param = _param_of(loc)
    if kind == "json_invalid":
        return InvalidRequest(
            "We could not parse the JSON body of your request: "
            f"{first.get('ctx', {}).get('error', 'invalid JSON')}.",
            code="invalid_json",
        )
    if kind == "model_type" or (kind == "model_attributes_type"):
        return InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if kind == "extra_forbidden" or (kind == "none_required" and len(loc) == 1):
        # none_required: a field of another operation (`image` in a JSON edit).
        return InvalidRequest(f"Unknown parameter: '{param}'.", param=param, code=UNKNOWN_PARAMETER)
    if kind == "missing":
        return InvalidRequest(
            f"Missing required parameter: '{param}'.",
            param=param,
            code=MISSING_REQUIRED_PARAMETER,
        )
    if kind == "string_pattern_mismatch" and param in _PATTERN_RULES:
        return InvalidRequest(
            f"Invalid value for '{param}': {_PATTERN_RULES[param]}.",
            param=param,
            code=INVALID_VALUE,
        )
    return InvalidRequest(
        f"Invalid value for '{param}': {first.get('msg', 'invalid value')}.",
        param=param,
        code=INVALID_VALUE,
    )


# What the character patterns of api.schemas mean, in words.
_PATTERN_RULES = {
    "prompt": "it must not contain NUL or other control characters (tab and line breaks are ok)",
    "user": "it must be printable text, without control characters or line breaks",
}

# Fields that only the gateway handles, so every model accepts them.
_ALWAYS = frozenset(
    {"prompt", "model", "n", "size", "response_format", "stream", "partial_images", "webhook_url"}
)


MAPPED_HEADER = "x-imagegate-mapped-params"
IGNORED_HEADER = "x-imagegate-ignored-params"


@dataclass(frozen=True)
class ParamNotes:
    """Tuning fields :func:`fit_tuning` changed: ``mapped`` as (field, asked, sent), and
    ``ignored`` (not sent upstream; ``user`` is still recorded on the job)."""

    mapped: tuple[tuple[str, str, str], ...] = ()
    ignored: tuple[str, ...] = ()

    def headers(self) -> dict[str, str]:
        """``x-imagegate-mapped-params: quality=hd->high`` and
        ``x-imagegate-ignored-params: style, user``; only the ones with entries."""
        out = {}
        if self.mapped:
            out[MAPPED_HEADER] = ", ".join(f"{n}={a}->{s}" for n, a, s in self.mapped)
        if self.ignored:
            out[IGNORED_HEADER] = ", ".join(self.ignored)
        return out

    def to_meta(self) -> dict[str, Any]:
        return {"mapped": [list(m) for m in self.mapped], "ignored": list(self.ignored)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None) -> ParamNotes:
        meta = meta or {}
        return cls(
            mapped=tuple((str(n), str(a), str(s)) for n, a, s in meta.get("mapped", ())),
            ignored=tuple(str(n) for n in meta.get("ignored", ())),
        )


def _map_quality(value: str, allowed: Sequence[str]) -> str | None:
    """OpenAI's quality word onto the model's choices: the same level (``hd`` and
    ``high``; ``standard`` and ``medium``), else ``auto`` (the model's default), else
    the nearest level; None (drop it) for ``auto`` on a model without it."""
    level = QUALITY_LEVELS.get(value)
    leveled = [c for c in allowed if c in QUALITY_LEVELS]
    if level is None or not leveled:
        return None
    same = [c for c in leveled if QUALITY_LEVELS[c] == level]
    if same:
        return same[0]
    if "auto" in allowed:
        return "auto"
    return min(leveled, key=lambda c: abs(QUALITY_LEVELS[c] - level))


# How a tuning field's value is mapped onto a model's narrower choices; a field with
# no mapper (style: vivid/natural have no equivalent elsewhere) is dropped instead.
_MAPPERS: dict[str, Callable[[str, Sequence[str]], str | None]] = {"quality": _map_quality}


def fit_tuning(req: GenerationRequest, model: Model) -> tuple[GenerationRequest, ParamNotes]:
    """``req`` with its tuning fields fitted to ``model`` (see the module docstring).

    A field the catalog lists in the model's ``options.ignored_params`` (accepted
    for compatibility, unused upstream) counts as ignored too.
    """
    mapped: list[tuple[str, str, str]] = []
    ignored: list[str] = []
    update: dict[str, Any] = {}
    unused = set(model.options.get("ignored_params", ()))
    for name in TUNING_PARAMS:
        value = getattr(req, name)
        if value is None:
            continue
        if name not in model.params or name in unused:
            ignored.append(name)
            update[name] = None
            continue
        allowed = model.choices.get(name)
        if allowed is None or value in allowed:
            continue
        mapper = _MAPPERS.get(name)
        target = mapper(value, allowed) if mapper else None
        if target is None:
            ignored.append(name)
            update[name] = None
        else:
            mapped.append((name, value, target))
            update[name] = target
    fitted = req.model_copy(update=update) if update else req
    return fitted, ParamNotes(tuple(mapped), tuple(ignored))


def check_against_model(req: GenerationRequest, model: Model) -> dict[str, Any]:
    """Return the job's request dict, or raise InvalidRequest naming the param.

    Without ``response_format`` the model's catalog default applies
    (``default_response_format``: ``b64_json`` for GPT image models, as OpenAI).
    """
    if len(req.prompt) > model.max_prompt_length:
        raise InvalidRequest(
            f"The prompt is {len(req.prompt)} characters long; '{model.id}' accepts at most "
            f"{model.max_prompt_length}.",
            param="prompt",
            code="string_above_max_length",
        )
    if _blank(req.prompt):
        raise InvalidRequest("The prompt must not be blank.", param="prompt", code=INVALID_VALUE)
    n = _checked_n(req.n, model)
    response_format = _checked_response_format(req.response_format, model)
    given = req.model_dump(exclude_none=True)
    for name, value in given.items():
        if name in _ALWAYS:
            continue
        if name not in model.params:
            raise InvalidRequest(
                f"'{model.id}' does not support the parameter '{name}'.",
                param=name,
                code=UNSUPPORTED_PARAMETER,
            )
        allowed = model.choices.get(name)
        if allowed is not None and str(value) not in allowed:
            raise InvalidRequest(
                f"Invalid value for '{name}' with '{model.id}': {value!r}. "
                f"Supported values: {', '.join(allowed)}.",
                param=name,
                code=INVALID_VALUE,
            )
    if req.background == "transparent" and req.output_format == "jpeg":
        raise InvalidRequest(
            "A transparent background needs output_format png or webp.",
            param="background",
            code=INVALID_VALUE,
        )
    size = None
    if req.size is not None and req.size != "auto":
        size = str(parse_size(req.size))
    if req.aspect_ratio is not None:
        parse_aspect_ratio(req.aspect_ratio)

    request = dict(given)
    request.update(
        model=model.id, n=n, size=size, response_format=response_format, requested_size=req.size
    )
    request.pop("stream", None)
    request.pop("partial_images", None)
    request.pop("webhook_url", None)  # kept on the job record, not sent upstream
    return request


def check_generates(model: Model) -> None:
    """InvalidRequest naming ``model`` for an edits-only model (``generations = false``)
    asked for a generation: it repaints images, it does not draw from a prompt alone."""
    if not model.generations:
        raise InvalidRequest(
            f"'{model.id}' only edits images: send them to POST /v1/images/edits.",
            param="model",
            code=INVALID_VALUE,
        )


def check_inputs(model: Model, images: int, mask: bool) -> None:
    """An edit's input images against the model's catalog entry, or InvalidRequest
    naming the param: the model edits, takes ``images`` references, and a mask if any."""
    if not model.edits:
        raise InvalidRequest(
            f"'{model.id}' does not edit images; GET /v1/models lists the models with "
            "`max_reference_images` above 0.",
            param="model",
            code=INVALID_VALUE,
        )
    if images > model.max_reference_images:
        raise InvalidRequest(
            f"'{model.id}' takes at most {model.max_reference_images} image(s) per edit; "
            f"the request has {images}.",
            param="image",
            code="too_many_images",
        )
    if mask and not model.mask:
        raise InvalidRequest(
            f"'{model.id}' takes no mask.", param="mask", code=UNSUPPORTED_PARAMETER
        )


def check_variation(req: VariationRequest, model: Model) -> dict[str, Any]:
    """The job's request dict of a variation (no prompt), or InvalidRequest naming the
    param: the model must make variations, and ``n``, ``response_format`` and ``size``
    are checked as for a generation. ``user`` is recorded, sent where the model takes it."""
    if not model.variations:
        raise InvalidRequest(
            f"'{model.id}' does not make variations; GET /v1/models lists the models with "
            "`variations`.",
            param="model",
            code=INVALID_VALUE,
        )
    n = _checked_n(req.n, model)
    response_format = _checked_response_format(req.response_format, model)
    size = None
    if req.size is not None and req.size != "auto":
        size = str(parse_size(req.size))
    request: dict[str, Any] = {
        "prompt": "",
        "model": model.id,
        "n": n,
        "size": size,
        "response_format": response_format,
        "requested_size": req.size,
    }
    if req.user is not None and "user" in model.params:
        request["user"] = req.user
    return request


def _checked_n(n: int | None, model: Model) -> int:
    n = n if n is not None else 1
    if n > model.max_n:
        raise InvalidRequest(
            f"'{model.id}' makes at most {model.max_n} image(s) per request; you asked for {n}.",
            param="n",
            code=INVALID_VALUE,
        )
    return n


def _checked_response_format(value: str | None, model: Model) -> str:
    """The client's ``response_format``, or the model's default; 400 if the model has not it."""
    response_format = value or model.default_response_format
    if response_format not in model.response_formats:
        raise InvalidRequest(
            f"'{model.id}' does not support response_format '{response_format}'.",
            param="response_format",
            code=INVALID_VALUE,
        )
    return response_format


def _blank(text: str) -> bool:
    """True when ``text`` shows nothing: only whitespace and invisible format
    characters (zero-width space and joiners, BOM, word joiner)."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)
