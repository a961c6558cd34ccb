"""GET /v1/usage: the caller's balance and usage, by day and model."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.auth import current_key
from api.schemas import Usage, UsageDay, UsageTotal
from api.services import services
from shared.billing import format_money

bp = Blueprint("usage", __name__, url_prefix="/v1")


@bp.get("/usage")
def get_usage():
    key = current_key()
    svc = services()
    rows = svc.accounts.usage(key.id)
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
    )
    return jsonify(usage.answer())
