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
    rows = svc.history.usage(key.id)
    by_model: dict[str, dict[str, int]] = {}
    for row in rows:
        total = by_model.setdefault(row.model, {"images": 0, "amount": 0})
        total["images"] += row.images
        total["amount"] += row.amount_micros
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
            )
            for row in rows
        ],
        totals=[
            UsageTotal(model=model, images=t["images"], amount=format_money(t["amount"]))
            for model, t in sorted(by_model.items())
        ],
    )
    return jsonify(usage.answer())
