"""WooCommerce: REST v3 ``orders``, ``customers``, ``products`` and a cart-capture endpoint.

Connection: ``login``/``password`` = consumer key/secret (HTTP basic auth, as over HTTPS).
WooCommerce core has no abandoned-cart resource; the cart endpoint is the capture plugin's and is
configurable in the connection's extra as ``cart_endpoint`` (default ``abandoned-carts``).
``modified_after`` is exclusive, so the window starts one second early; the overlap is absorbed
by the idempotent load.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta
from typing import ClassVar

from cart_recovery.platforms.base import PageGuard, PlatformClient, PolledRecord, Window, parse_time

MAX_PER_PAGE = 100


def _gmt(moment) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def polled_record(entity: str, payload: dict) -> PolledRecord:
    record_id = payload.get("id")
    billing = payload.get("billing") or {}
    return PolledRecord(
        entity=entity,
        record_id=str(record_id) if record_id not in (None, "") else None,
        updated_at=parse_time(payload.get("date_modified_gmt"), "UTC"),
        created_at=parse_time(payload.get("date_created_gmt"), "UTC"),
        payload=payload,
        currency=payload.get("currency"),
        total=payload.get("total") if entity in ("cart", "order") else None,
        email=payload.get("email") or billing.get("email") or None,
        phone=payload.get("phone") or billing.get("phone") or None,
    )


class WooCommerceClient(PlatformClient):
    platform = "woocommerce"
    default_page_size: ClassVar[int] = MAX_PER_PAGE

    def endpoint(self, entity: str) -> str:
        resource = {"order": "orders", "customer": "customers", "product": "products"}.get(entity)
        if entity == "cart":
            resource = str(self.extra.get("cart_endpoint") or "abandoned-carts")
        return f"wp-json/wc/v3/{resource.strip('/')}"

    def fetch(self, entity: str, window: Window) -> Iterator[PolledRecord]:
        params = {
            "per_page": min(self.page_size, MAX_PER_PAGE),
            "orderby": "modified" if entity != "customer" else "id",
            "order": "asc",
            "dates_are_gmt": "true",
            "modified_before": _gmt(window.until + timedelta(seconds=1)),
        }
        if window.since is not None:
            params["modified_after"] = _gmt(window.since - timedelta(seconds=1))
        page = 1
        guard = PageGuard(self.shop.id, entity)
        while True:
            response = self.request("GET", self.endpoint(entity), params={**params, "page": page})
            records = response.json()
            converted = [polled_record(entity, payload) for payload in records]
            guard.check(converted)
            for record in converted:
                if record.updated_at is None or record.updated_at <= window.until:
                    yield record
            total_pages = int(response.headers.get("X-WP-TotalPages") or 0)
            if not records or page >= total_pages:
                return
            page += 1
