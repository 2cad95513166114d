"""Constants shared by the polling tests (imported by name: ``conftest`` is ambiguous when
several test folders run in one session)."""

from __future__ import annotations

from datetime import datetime

from cart_recovery.simulator import Simulator
from cart_recovery.simulator.data import DEFAULT_REFERENCE_TIME

# The simulator's data ends at its reference time; a run whose interval ends there sees all of it.
INTERVAL_END: datetime = DEFAULT_REFERENCE_TIME


def expected_counts(sim: Simulator, shop_id: str) -> dict[str, int]:
    """What a poll of the whole history stores for the shop, per entity (Ticimax has no products API)."""
    data = sim.data(shop_id)
    counts = {"cart": len(data.carts), "order": len(data.orders), "customer": len(data.customers)}
    if data.shop.platform != "ticimax":
        counts["product"] = len(data.products)
    return counts


def records(sim: Simulator, shop_id: str, entity: str) -> list:
    """The simulator's records of one entity of a shop (what a poll of everything returns)."""
    data = sim.data(shop_id)
    return {"cart": data.carts, "order": data.orders, "customer": data.customers, "product": data.products}[
        entity
    ]


def newest_update(sim: Simulator, shop_id: str, entity: str, until=INTERVAL_END):
    """The watermark a poll up to ``until`` must leave: the newest update time at or before it."""
    return max(r.updated_at for r in records(sim, shop_id, entity) if r.updated_at <= until)
