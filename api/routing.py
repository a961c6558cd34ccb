"""Choosing the real models behind a virtual model, per request.

A virtual model (``image-turbo``, ``image``, ``image-pro``) lists candidate real
models with weights. For each request :func:`plan` keeps the candidates that
can honour it — family available with a key, the request valid for the model
(n, prompt length, parameters and their values, edit mode, size rule) after
the candidate's parameter overrides; for an edit, a candidate that takes that
many reference images and the mask if there is one (``inputs``) — and whose
circuit breaker is not open,
then orders them by weighted random choice without replacement
(Efraimidis–Spirakis keys ``u ** (1 / weight)``). The job is sent to the
first; the rest are its fallbacks, tried in order by the workers when a
candidate fails in a way another can fix.

The client pays the virtual model's price read at the size the first route
will produce (:func:`unit_price`); a route whose upstream cost for its request
is above that price is dropped (unless the virtual model says ``allow_loss``),
so no fallback is sold at a loss either. When the first route itself would
lose, the next one is tried first.

Each candidate fits the client's tuning fields for itself
(:func:`api.validation.fit_tuning`, unless ``strict``), so a route carries its
own :class:`~api.validation.ParamNotes`. Without ``response_format`` a
virtual model answers ``url`` whatever its candidates' defaults are: the
client asked for the gateway's model, not for a GPT image model.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import redis

from api.schemas import GenerationRequest
from api.validation import (
    ParamNotes,
    check_against_model,
    check_generates,
    check_inputs,
    fit_tuning,
)
from shared.catalog import Catalog, Family, Model, VirtualModel
from shared.errors import PRICED_BELOW_COST, GatewayError, InvalidRequest, ServiceUnavailable
from shared.health import Breakers
from shared.presence import why_unusable
from shared.route import model_breaker, route_meta
from shared.settings import Settings
from shared.sizing import parse_size


@dataclass(frozen=True)
class Inputs:
    """An edit's input images as routing sees them: how many, and whether a mask."""

    images: int
    mask: bool = False


@dataclass(frozen=True)
class Route:
    model: Model
    family: Family
    request: dict[str, Any]  # the job request for this candidate (overrides applied)
    notes: ParamNotes = ParamNotes()  # tuning fields mapped or ignored for this candidate

    def to_meta(self, base: dict[str, Any]) -> dict[str, Any]:
        """The route as the job spec keeps it (:func:`shared.route.route_meta`)."""
        return route_meta(self.model.id, self.request, base, self.notes.to_meta())


def plan(
    req: GenerationRequest,
    virtual: VirtualModel,
    *,
    catalog: Catalog,
    settings: Settings,
    breakers: Breakers,
    rng: random.Random | None = None,
    strict: bool = False,
    client: redis.Redis | None = None,
    inputs: Inputs | None = None,
) -> list[Route]:
    eligible: list[tuple[Route, float]] = []
    first_error: GatewayError | None = None
    for candidate in virtual.candidates:
        model = catalog.models[candidate.model]
        family = catalog.family_of(model)
        # With the web's Redis (``client``), a family counts as served by a live worker
        # that has its key even when these settings lack it (shared.presence).
        reason = why_unusable(settings, family, client) if client else settings.why_unusable(family)
        if reason:
            continue
        try:
            if inputs is not None:
                check_inputs(model, inputs.images, inputs.mask)
            else:
                check_generates(model)
            merged = req.model_copy(
                update={"response_format": req.response_format or "url", **candidate.overrides}
            )
            notes = ParamNotes()
            if not strict:
                merged, notes = fit_tuning(merged, model)
            request = check_against_model(merged, model)
            requested = parse_size(request["size"]) if request.get("size") else None
            model.size_rule.clamp(requested, request.get("aspect_ratio"), model.default_size)
        except InvalidRequest as exc:
            first_error = first_error or exc
            continue
        eligible.append((Route(model, family, request, notes), candidate.weight))
    if not eligible:
        if first_error is not None:
            first_error.message = (
                f"No model behind '{virtual.id}' can serve this request: {first_error.message}"
            )
            raise first_error
        raise ServiceUnavailable(
            f"No model behind '{virtual.id}' is configured on this gateway.",
            code="model_unavailable",
            headers={"x-should-retry": "false"},
        )
    healthy = [(r, w) for r, w in eligible if breakers.would_allow(model_breaker(r.model.id))]
    if not healthy:
        retry = min(
            (breakers.status(model_breaker(r.model.id)).retry_at or 0.0) for r, _ in eligible
        )
        raise ServiceUnavailable(
            f"Every model behind '{virtual.id}' is failing right now; try again shortly.",
            code="all_candidates_unhealthy",
            headers={"Retry-After": str(max(1, int(retry - time.time()) + 1))},
        )
    rng = rng or random.Random()
    keyed = sorted(healthy, key=lambda rw: rng.random() ** (1.0 / rw[1]), reverse=True)
    return affordable(virtual, [route for route, _ in keyed])


def unit_price(virtual: VirtualModel, routes: list[Route]) -> int:
    """Micro-units per image the client pays: the price at the first route's size."""
    return virtual.unit_price(routes[0].model, routes[0].request)


def affordable(virtual: VirtualModel, routes: list[Route]) -> list[Route]:
    """``routes`` without those costing more than the client pays (see the docstring)."""
    if virtual.allow_loss:
        return routes
    for index, first in enumerate(routes):
        price = virtual.unit_price(first.model, first.request)
        kept = [r for r in routes[index:] if (r.model.unit_cost(r.request) or 0) <= price]
        if kept and kept[0] is first:
            return kept
    raise ServiceUnavailable(
        f"No model behind '{virtual.id}' can serve this request at its price; "
        "try another size or quality, or a model by name.",
        code=PRICED_BELOW_COST,
        headers={"x-should-retry": "false"},
    )
