"""The route contract between the API, which plans a job's routes, and the worker,
which runs them; and the names of the circuit breakers both consult.

**Routes.** A job for a virtual model carries its candidate real models in
``job.meta["routes"]``, in the order they are tried; ``job.candidate`` is the
index of the current one. Each route is written by :func:`route_meta` as::

    {"model": <real model id>,
     "changes": {<field>: <value>, ...},   # its request = the job's request + changes
     "unset": [<field>, ...],              #   - these fields
     "params": {...}}                      # tuning fields mapped or ignored (api.validation)

so the prompt and the other shared fields are stored once, not once per
candidate. :func:`route_of` reads it back; records written before ``changes``
existed keep the whole request under ``"request"``, and are still read. A job
of a real model has no routes: it runs its own model and request.

**Breaker names** (:mod:`shared.health`): one breaker per real model,
:func:`model_breaker` (``model:<id>``), and one per upstream key,
:func:`key_breaker` (``key:<family>:<index of the key>``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.catalog import Catalog, Model
from shared.jobs import Job


def route_meta(
    model_id: str,
    request: Mapping[str, Any],
    base: Mapping[str, Any],
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """A route as the job spec keeps it: ``request`` as changes to ``base`` (the job's
    request) and the fields it unsets; ``params`` is its tuning-field notes."""
    return {
        "model": model_id,
        "changes": {k: v for k, v in request.items() if k not in base or base[k] != v},
        "unset": [k for k in base if k not in request],
        "params": dict(params),
    }


def route_of(job: Job, catalog: Catalog) -> tuple[Model, dict[str, Any]]:
    """The real model and request the job's current route runs."""
    routes = job.meta.get("routes")
    if not routes:
        return catalog.model(job.model), job.request
    route = routes[min(job.candidate, len(routes) - 1)]
    if "request" in route:
        return catalog.model(route["model"]), route["request"]
    unset = set(route.get("unset", ()))
    request = {k: v for k, v in job.request.items() if k not in unset}
    request.update(route.get("changes", {}))
    return catalog.model(route["model"]), request


def model_breaker(model_id: str) -> str:
    """The circuit breaker of a real model."""
    return f"model:{model_id}"


def key_breaker(family: str, index: int) -> str:
    """The circuit breaker of a family's ``index``-th upstream key."""
    return f"key:{family}:{index}"
