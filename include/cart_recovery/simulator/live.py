"""The simulator in real time: the demo shops' customers keep shopping while ``make up`` runs.

``LiveActivity`` adds a cart every few seconds to one of the simulated shops, now and then brings a
cart back to life or completes one with an order, and sends each change as the platform's signed
webhook to the webhook service (Ticimax sends none: it is polled only). The fake APIs serve the
same records, so the poller sees them too, as with a real shop that has both paths.

Times are real: a cart created now is abandoned 30 minutes from now, and the recovery plan's
stages fall due in real time. (The history the simulator starts with ends at the moment
``make up`` first ran, so the first build already has abandoned carts to plan.)
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from faker import Faker

from cart_recovery.shops import Platform
from cart_recovery.simulator.coupons import CouponRefused, place_order
from cart_recovery.simulator.data import Cart, LineItem, ShopData
from cart_recovery.simulator.server import Simulator
from cart_recovery.simulator.webhooks import Delivery, delivery, send

log = logging.getLogger(__name__)

_ID_BASE = 39_000_000_000  # live carts and orders: ids above the generated history's
_EPOCH_MS = 1_760_000_000_000  # 2025-10-09: ids count milliseconds from here, unique across restarts


@dataclass
class LiveActivity:
    """Real-time shoppers for a running ``Simulator``; ``start()`` runs them in a thread."""

    simulator: Simulator
    webhook_url: str | None  # e.g. http://127.0.0.1:8081; None: changes are only polled
    every_s: float = 45.0  # one change every this many seconds, on average
    seed: int = 1
    counts: Counter = field(default_factory=Counter)
    _pending: deque = field(default_factory=lambda: deque(maxlen=10_000))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(f"live:{self.seed}:{datetime.now(UTC).timestamp()}")
        self._fakers = {"tr": Faker("tr_TR"), "en": Faker("en_US")}

    # -- one change -----------------------------------------------------------------------------

    def step(self, now: datetime) -> str:
        """Make one change at ``now`` in a random shop; returns what it did."""
        data = self._rng.choice(list(self.simulator.state.shops.values()))
        roll = self._rng.random()
        recent = [c for c in data.carts[-50:] if c.completed_at is None and c.updated_at < now]
        if roll < 0.15 and recent:
            cart = self._rng.choice(recent)
            self._complete(data, cart, now)
            return "order"
        if roll < 0.30 and recent:
            cart = self._rng.choice(recent)
            cart.updated_at = now  # the customer came back: activity resumes
            self._deliver(data, cart, created=False)
            return "cart_updated"
        cart = self._new_cart(data, now)
        data.carts.append(cart)
        self._deliver(data, cart, created=True)
        return "cart_created"

    def _new_cart(self, data: ShopData, now: datetime) -> Cart:
        rng = self._rng
        serial = _serial(now)
        customer = rng.choice(data.customers) if rng.random() < 0.85 else None
        items = [
            LineItem(product, rng.choice(product.variants), rng.randint(1, 2))
            for product in rng.sample(data.products, rng.randint(1, 3))
        ]
        guest = self._fakers[data.shop.language]
        return Cart(
            id=_ID_BASE + serial,
            token=hashlib.md5(f"live:{data.shop.id}:{serial}".encode()).hexdigest(),
            customer=customer,
            email=customer.email if customer else guest.free_email(),
            phone=customer.phone if customer else None,
            currency=data.shop.currency,
            items=items,
            created_at=now,
            updated_at=now,
        )

    def _complete(self, data: ShopData, cart: Cart, now: datetime) -> None:
        """An order for ``cart``; a shopper who was sent a code (the recovery coupon) uses it about
        half the time, which redeems it in the shop's coupon book."""
        book = self.simulator.state.coupon_book(data.shop.id)
        customer_id = cart.customer.id if cart.customer else None
        usable = book.usable(email=cart.email, customer_id=customer_id, at=now)
        code = self._rng.choice(usable).code if usable and self._rng.random() < 0.5 else None
        try:
            order = place_order(book, cart, order_id=_ID_BASE + _serial(now), at=now, coupon_code=code)
        except CouponRefused:  # used up by a concurrent order since: pay full price
            order = place_order(book, cart, order_id=_ID_BASE + _serial(now), at=now)
        self.counts["coupon_redeemed" if order.coupon_code else "order_without_coupon"] += 1
        data.orders.append(order)
        self._deliver(data, order, created=True)

    # -- webhooks -------------------------------------------------------------------------------

    def _deliver(self, data: ShopData, record, *, created: bool) -> None:
        if self.webhook_url is None or data.shop.platform is Platform.TICIMAX:
            return
        self._pending.append(delivery(data.shop, record, created=created))
        self.flush()

    def flush(self) -> None:
        """Send what is pending, oldest first; a delivery that fails is retried on the next step."""
        with httpx.Client(timeout=5.0) as client:
            while self._pending:
                webhook: Delivery = self._pending[0]
                url = f"{self.webhook_url.rstrip('/')}/webhooks/{webhook.shop.platform}"
                try:
                    answer = send(url, webhook, client=client)
                except httpx.HTTPError as exc:
                    self.counts["webhook_retry_later"] += 1
                    log.debug("webhook to %s not delivered yet: %s", url, exc)
                    return
                if answer.status_code >= 500 or answer.status_code == 429:
                    self.counts["webhook_retry_later"] += 1
                    return
                self._pending.popleft()
                self.counts["webhook_2xx" if answer.is_success else f"webhook_{answer.status_code}"] += 1

    # -- the thread -----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="live-shoppers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._rng.expovariate(1 / self.every_s)):
            try:
                self.counts[self.step(datetime.now(UTC))] += 1
            except Exception:  # a demo must keep going; the log says what went wrong
                log.exception("live shoppers: a step failed")


def _serial(now: datetime) -> int:
    """Milliseconds since ``_EPOCH_MS``: live ids that never repeat, across restarts too."""
    return int(now.timestamp() * 1000) - _EPOCH_MS


def pinned_reference_time(path, now: datetime | None = None) -> datetime:
    """The end of the demo's generated history: the first start's time, kept in ``path``.

    The same history on every start (the same carts, the same times), so a restart of
    ``make up`` does not land every cart again as a new version.
    """
    if path.exists():
        return datetime.fromisoformat(path.read_text().strip())
    moment = (now or datetime.now(UTC)).replace(microsecond=0) - timedelta(minutes=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(moment.isoformat())
    return moment
