"""GET /v1/models and GET /v1/models/{id}: the catalog in OpenAI's list format.

Besides OpenAI's fields (id, object, created, owned_by) each entry says what
the gateway knows of it: family, price per image, size rule, limits, what
edits and variations it serves (``max_reference_images``, ``mask``,
``variations``), and whether it can be used right now (``available``, with
the reason when not).
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.auth import current_key
from api.schemas import Candidate, ModelList, RealModel, VirtualModel
from api.services import Services, services
from shared import catalog
from shared.presence import why_unusable
from shared.route import model_breaker

bp = Blueprint("models", __name__, url_prefix="/v1")

_CREATED = 1763683200  # catalog entries have no creation time of their own


def describe_virtual(vm: catalog.VirtualModel, svc: Services) -> VirtualModel:
    candidates = []
    for candidate in vm.candidates:
        real = describe(svc.catalog.models[candidate.model], svc)
        candidates.append(
            Candidate(
                model=candidate.model,
                weight=candidate.weight,
                params=dict(candidate.overrides),
                available=real.available,
                health=real.health,
            )
        )
    return VirtualModel(
        id=vm.id,
        object="model",
        created=_CREATED,
        owned_by=vm.owned_by,
        virtual=True,
        description=vm.description,
        price_per_image=str(vm.price),
        pricing=vm.pricing.describe(),
        candidates=candidates,
        available=any(c.available and c.health != "open" for c in candidates),
    )


def describe(model: catalog.Model, svc: Services) -> RealModel:
    family = svc.catalog.family_of(model)
    reason = why_unusable(svc.settings, family, svc.redis)
    return RealModel(
        id=model.id,
        object="model",
        created=_CREATED,
        owned_by=model.owned_by,
        family=family.name,
        description=model.description,
        price_per_image=str(model.price),
        pricing=model.pricing.describe(),
        size_rule=model.size_rule.describe(),
        default_size=str(model.default_size),
        max_n=model.max_n,
        max_prompt_length=model.max_prompt_length,
        response_formats=list(model.response_formats),
        default_response_format=model.default_response_format,
        params=sorted(model.params),
        max_reference_images=model.max_reference_images,
        mask=model.mask,
        variations=model.variations,
        generations=model.generations,
        available=not reason,
        **({"unavailable_reason": reason} if reason else {}),
        virtual=False,
        health=svc.breakers.status(model_breaker(model.id)).state.value,
    )


@bp.get("/models")
def list_models():
    current_key()
    svc = services()
    data = [describe_virtual(v, svc) for v in svc.catalog.virtual.values()]
    data += [describe(m, svc) for m in svc.catalog.models.values()]
    return jsonify(ModelList(object="list", data=data).answer())


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    current_key()
    svc = services()
    target = svc.catalog.resolve(model_id)
    if isinstance(target, catalog.VirtualModel):
        return jsonify(describe_virtual(target, svc).answer())
    return jsonify(describe(target, svc).answer())
