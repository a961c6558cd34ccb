"""GET /v1/usage: the caller's balance, its tier's limits, and usage by day and model; today's
free images and spending against the key's caps; with ``?group_by=user``, usage by day and end
user."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api.auth import current_key
from api.schemas import (
    Budget,
    FreeImages,
    TierLimits,
    TierModelLimit,
    Usage,
    UsageDay,
    UsageTotal,
    UsageUserDay,
)
from api.services import Services, services
from shared.billing import format_money
from shared.errors import INVALID_VALUE, InvalidRequest
from shared.keys import ApiKey

GROUPS = ("user",)

bp = Blueprint("usage", __name__, url_prefix="/v1")


@bp.get("/usage")
def get_usage():
    key = current_key()
    svc = services()
    group_by = request.args.get("group_by")
    if group_by is not None and group_by not in GROUPS:
        raise InvalidRequest(
            f"group_by must be one of: {', '.join(GROUPS)}.", param="group_by", code=INVALID_VALUE
        )
    free = svc.accounts.free_status(key)
    rows = svc.history.usage(key.id)
    by_model: dict[str, dict[str, int]] = {}
    for row in rows:
        total = by_model.setdefault(row.model, {"images": 0, "amount": 0, "cost": 0})
        total["images"] += row.images
        total["amount"] += row.amount_micros
        total["cost"] += row.cost_micros
    show = svc.settings.usage_shows_cost

    def costs(amount: int, cost: int) -> dict[str, str]:
        if not show:
            return {}
        return {"cost": format_money(cost), "margin": format_money(amount - cost)}

    usage = Usage(
        object="usage",
        key_id=key.id,
        tier=key.tier,
        balance="unlimited" if key.unlimited else format_money(svc.accounts.balance(key.id)),
        **({"limits": limits} if (limits := _limits(key, svc)) else {}),
        data=[
            UsageDay(
                day=row.day,
                model=row.model,
                images=row.images,
                amount=format_money(row.amount_micros),
                **costs(row.amount_micros, row.cost_micros),
            )
            for row in rows
        ],
        totals=[
            UsageTotal(
                model=model,
                images=t["images"],
                amount=format_money(t["amount"]),
                **costs(t["amount"], t["cost"]),
            )
            for model, t in sorted(by_model.items())
        ],
        free_images=None
        if free is None
        else FreeImages(
            per_day=free.per_day,
            used=free.used,
            remaining=free.remaining,
            resets_at=free.resets_at,
        ),
        budgets=[
            Budget(
                period=b.period,
                cap=format_money(b.cap_micros) if b.cap_micros else None,
                spent=format_money(b.spent_micros),
                resets_at=b.resets_at,
            )
            for b in svc.accounts.budget_status(key)
        ],
        users=[
            UsageUserDay(
                day=row.day,
                user=row.user,
                images=row.images,
                amount=format_money(row.amount_micros),
            )
            for row in svc.accounts.usage_by_user(key.id)
        ]
        if group_by == "user"
        else [],
    )
    return jsonify(usage.answer())


def _limits(key: ApiKey, svc: Services) -> TierLimits | None:
    """The limits of the key's tier; none for a tier the catalog no longer has."""
    tier = svc.catalog.tiers.get(key.tier)
    if tier is None:
        return None
    return TierLimits(
        requests_per_minute=tier.requests_per_minute,
        all_models=tier.all_models,
        models=[
            TierModelLimit(model=model, per_minute=limit.per_minute, per_day=limit.per_day)
            for model, limit in tier.limits.items()
        ],
    )
