"""What the fake APIs share: the generated shops, the failure knobs and request counters."""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from fastapi import HTTPException
from fastapi.responses import Response

from cart_recovery.shops import Platform
from cart_recovery.simulator.coupons import CouponBook
from cart_recovery.simulator.data import ShopData
from cart_recovery.simulator.whatsapp_api import WhatsAppState

T = TypeVar("T")
MAX_LISTINGS = 64


@dataclass
class Knobs:
    """Failure injection. ``throttle_every=N`` answers every Nth API request of a shop with 429."""

    throttle_every: int = 0
    retry_after: int = 1
    fail_every: int = 0  # every Nth request answers 503
    token_ttl: int = 86_400  # Ideasoft access token lifetime, seconds
    ignore_paging: bool = False  # a broken server: every listing answers its first page
    # Every page runs the query again, as a real API's offset paging does: a record changed while
    # its listing is read moves to the end (and the records after it shift back by one).
    live_listings: bool = False
    # API credentials with read access only: writes (coupon creation) are refused as the platforms
    # refuse them (Shopify ACCESS_DENIED without write_discounts, WooCommerce 403 for a read key).
    read_only_keys: bool = False


@dataclass
class SimulatorState:
    shops: dict[str, ShopData]
    knobs: Knobs = field(default_factory=Knobs)
    requests: Counter = field(default_factory=Counter)  # (shop_id, label) -> count
    whatsapp: WhatsAppState = field(default_factory=WhatsAppState)  # the fake WhatsApp Cloud API
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Listings being paged through: (shop, listing, window) -> the matching records, oldest first.
    _listings: OrderedDict = field(default_factory=OrderedDict)
    # Coupons created through the fake APIs, per shop (see ``coupons.py``).
    coupons: dict[str, CouponBook] = field(default_factory=dict)

    def coupon_book(self, shop_id: str) -> CouponBook:
        with self._lock:
            return self.coupons.setdefault(shop_id, CouponBook())

    def shop(self, shop_id: str, platform: Platform) -> ShopData:
        data = self.shops.get(shop_id)
        if data is None or data.shop.platform is not platform:
            raise HTTPException(status_code=404, detail=f"no {platform} shop {shop_id!r}")
        return data

    def count(self, shop_id: str, label: str) -> int:
        with self._lock:
            self.requests[(shop_id, label)] += 1
            return self.requests[(shop_id, label)]

    def listing(
        self,
        key: tuple,
        records: Callable[[], Iterable[T]],
        updated: Callable[[T], datetime],
        since: datetime | None,
        until: datetime | None,
        *,
        exclusive_since: bool = False,
        first_page: bool,
    ) -> list[T]:
        """The records of one listing inside its window, oldest first, selected once per listing.

        The first page selects and sorts (as a real API runs the query); the following pages of the
        same listing and window reuse that selection, so that paging through N records costs
        O(N log N) in total, not per page. A new listing (first page) always sees the current data,
        so tests may change records between polls. Only references are kept, for the last
        ``MAX_LISTINGS`` listings.
        """
        key = (*key, since, until, exclusive_since)
        if self.knobs.live_listings:
            return in_window(records(), updated, since, until, exclusive_since=exclusive_since)
        with self._lock:
            chosen = None if first_page else self._listings.get(key)
            if chosen is not None:
                self._listings.move_to_end(key)
                return chosen
        chosen = in_window(records(), updated, since, until, exclusive_since=exclusive_since)
        with self._lock:
            self._listings[key] = chosen
            while len(self._listings) > MAX_LISTINGS:
                self._listings.popitem(last=False)
        return chosen

    def injected_failure(self, shop_id: str) -> Response | None:
        """The 429 or 503 that the knobs ask for on this request, if any."""
        n = self.count(shop_id, "api")
        knobs = self.knobs
        if knobs.throttle_every and n % knobs.throttle_every == 0:
            self.count(shop_id, "throttled")
            return Response(
                status_code=429,
                content='{"errors":"Exceeded API rate limit, please retry later."}',
                media_type="application/json",
                headers={"Retry-After": str(knobs.retry_after)},
            )
        if knobs.fail_every and n % knobs.fail_every == 0:
            self.count(shop_id, "failed")
            return Response(status_code=503, content="Service Unavailable")
        return None


def in_window(
    records: Iterable[T],
    updated: Callable[[T], datetime],
    since: datetime | None,
    until: datetime | None,
    *,
    exclusive_since: bool = False,
) -> list[T]:
    """Records updated inside [since, until], oldest first (ties by insertion order)."""
    chosen = []
    for record in records:
        moment = updated(record)
        if since is not None and (moment <= since if exclusive_since else moment < since):
            continue
        if until is not None and moment > until:
            continue
        chosen.append(record)
    return sorted(chosen, key=updated)


def page(records: Sequence[T], number: int, size: int) -> list[T]:
    start = (max(number, 1) - 1) * size
    return list(records[start : start + size])
