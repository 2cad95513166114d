"""What every shop platform client shares: the record they yield, HTTP through the provider's hook,
and backoff.

A client streams records (``fetch`` is a generator, one page in memory at a time) for one entity
updated inside a window. HTTP goes through ``airflow.providers.http.hooks.http.HttpHook``: the
shop's Airflow connection (``AIRFLOW_CONN_<ID>``) supplies the base URL and credentials; its
``host`` may be left empty, in which case ``api_base_url`` from the shops file is used.

Retries: 429 waits ``Retry-After`` (capped); 5xx, connection errors and timeouts back off
exponentially; both bounded by ``max_attempts``. Other 4xx fail at once with a message saying
what to check.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import requests

from cart_recovery.errors import CartRecoveryError
from cart_recovery.shops import Shop

log = logging.getLogger(__name__)

ENTITIES = ("cart", "order", "customer", "product")
# Keys of a shop connection's extra that are settings, not HTTP headers. HttpHook would send every
# other extra key as a header, so these are removed from the session before any request.
SETTINGS_EXTRAS = frozenset({"webhook_secret", "cart_endpoint", "page_size", "api_version"})


class PlatformError(CartRecoveryError):
    """The shop's API answered something the client cannot use."""


class PlatformAuthError(PlatformError):
    """The shop refused the credentials: fix the shop's Airflow connection."""


class PlatformUnavailable(PlatformError):
    """The shop kept failing (429/5xx/timeouts) after every retry; the task retry will try later."""


@dataclass(frozen=True)
class Window:
    """Records updated in ``[since, until]``; ``since`` None means from the beginning."""

    since: datetime | None
    until: datetime

    def contains(self, moment: datetime) -> bool:
        return (self.since is None or moment >= self.since) and moment <= self.until


@dataclass(frozen=True)
class PolledRecord:
    """One record as the platform sent it, plus the facts validation and loading need.

    ``record_id`` and ``updated_at`` are None when the payload lacks them or they do not parse;
    such records are quarantined, never loaded.
    """

    entity: str
    record_id: str | None
    updated_at: datetime | None
    payload: dict
    created_at: datetime | None = None
    currency: str | None = None
    total: str | None = None  # decimal text as sent
    email: str | None = None
    phone: str | None = None


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0
    timeout: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def backoff(self, attempt: int) -> float:
        return min(self.base_delay * 2 ** (attempt - 1), self.max_delay)


def parse_time(value: Any, default_tz: str = "UTC") -> datetime | None:
    """An aware datetime from ISO 8601 text; naive values are read in ``default_tz``."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(default_tz))


def decimal_text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        Decimal(str(value))
    except InvalidOperation:
        return str(value)  # kept as sent; validation rejects it
    return str(value)


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _retry_after_seconds(header: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header; ``None`` when it says nothing usable.

    Delay-seconds or an HTTP date (RFC 9110). What servers really send is handled: ``nan`` and
    garbage are ignored (the caller's backoff applies), a negative or past value means now, an
    infinite or huge one stays huge (the caller gives up on it), and a date without a zone is
    read as GMT, which is what HTTP dates are. ``now`` is the wall clock by default: the header is
    relative to the moment the answer arrived.
    """
    if not header or not header.strip():
        return None
    text = header.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if math.isnan(seconds):
            return None
        return max(seconds, 0.0)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


MAX_PAGES = 100_000  # 25 million records at Shopify's 250 a page: past that, something is wrong


@dataclass
class PageGuard:
    """Ends a listing that would never end, with an error that says why.

    A server that ignores the page parameter (or its cursor) answers the same page again and
    again; without this a poll loops until its task times out, and every retry does the same.
    ``check`` gets each page's records before they are handed on and raises ``PlatformError``
    on a page identical to the one before it (same record ids and update times), or when the
    listing passes ``max_pages``.
    """

    shop_id: str
    what: str
    max_pages: int = MAX_PAGES
    pages: int = 0
    _previous: tuple | None = field(default=None, repr=False)

    def check(self, records: list[PolledRecord]) -> None:
        self.pages += 1
        if self.pages > self.max_pages:
            raise PlatformError(
                f"{self.shop_id}: {self.what} listing passed {self.max_pages} pages; stopped rather than "
                "loop (does the API honour its page parameter?)"
            )
        page = tuple((r.record_id, r.updated_at) for r in records)
        if page and page == self._previous:
            raise PlatformError(
                f"{self.shop_id}: {self.what} page {self.pages} repeats page {self.pages - 1} record for "
                "record: the API ignores the page parameter (or cursor). Stopped instead of looping; "
                "check the shop's API or a proxy in front of it."
            )
        self._previous = page


class PlatformClient(ABC):
    """Base of the four platform clients. Subclasses implement ``fetch``."""

    platform: ClassVar[str]
    entities: ClassVar[tuple[str, ...]] = ENTITIES
    use_connection_login_as_basic_auth: ClassVar[bool] = True

    def __init__(
        self,
        shop: Shop,
        *,
        conn_id: str | None = None,
        page_size: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        from airflow.providers.http.hooks.http import HttpHook  # heavy import, only when polling

        self.shop = shop
        self.retry = retry or RetryPolicy()
        self.hook = HttpHook(method="GET", http_conn_id=conn_id or shop.conn_id)
        self.connection = self.hook.get_connection(self.hook.http_conn_id)
        self.extra: dict = self.connection.extra_dejson or {}
        self.session: requests.Session = self.hook.get_conn()
        for key in SETTINGS_EXTRAS:
            self.session.headers.pop(key, None)
        # Secrets pasted into a connection often carry a newline or spaces: never send those.
        self.login = (self.connection.login or "").strip()
        self.password = (self.connection.password or "").strip()
        self.session.auth = (self.login, self.password) if self.use_connection_login_as_basic_auth else None
        self.base_url = (self.hook.base_url if self.connection.host else shop.api_base_url).rstrip("/")
        self.page_size = int(page_size or self.extra.get("page_size") or self.default_page_size)
        self.stats = {"requests": 0, "throttled": 0, "retried": 0}

    default_page_size: ClassVar[int] = 100

    @abstractmethod
    def fetch(self, entity: str, window: Window) -> Iterator[PolledRecord]:
        """Stream every ``entity`` record updated inside ``window``, page by page."""

    # -- HTTP ------------------------------------------------------------------------------------
    def retryable(self, response: requests.Response) -> bool:
        return response.status_code == 429 or response.status_code >= 500

    def prepare(self, request: requests.Request) -> requests.Request:
        """Last chance to add per-request auth (Ideasoft's bearer token)."""
        return request

    def on_unauthorised(self, response: requests.Response) -> bool:
        """Called on a 401; True when the client fixed its credentials and the call may be repeated."""
        return False

    def request(self, method: str, endpoint: str, **kwargs: Any) -> requests.Response:
        """One API call through the hook, with the retries described in the module docstring."""
        url = f"{self.base_url}/{endpoint.lstrip('/')}"
        reauthenticated = False
        attempt = 0
        while True:
            attempt += 1
            self.stats["requests"] += 1
            prepared = self.session.prepare_request(self.prepare(requests.Request(method, url, **kwargs)))
            try:
                response = self.hook.run_and_check(
                    self.session, prepared, {"check_response": False, "timeout": self.retry.timeout}
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= self.retry.max_attempts:
                    raise PlatformUnavailable(
                        f"{self.shop.id}: {method} {endpoint} failed {attempt} times ({exc}); "
                        f"check that {self.base_url} is reachable"
                    ) from exc
                delay = self.retry.backoff(attempt)
                log.warning(
                    "%s: %s on %s, retry %d in %.1fs",
                    self.shop.id,
                    type(exc).__name__,
                    endpoint,
                    attempt,
                    delay,
                )
                self.stats["retried"] += 1
                self.retry.sleep(delay)
                continue
            if response.status_code == 401 and not reauthenticated and self.on_unauthorised(response):
                reauthenticated = True
                attempt -= 1
                continue
            if response.status_code < 400:
                return response
            if response.status_code in (401, 403):
                raise PlatformAuthError(
                    f"{self.shop.id}: {self.platform} refused the credentials ({response.status_code} "
                    f"{response.text[:200]}); check the Airflow connection {self.hook.http_conn_id!r}"
                )
            if not self.retryable(response):
                raise PlatformError(
                    f"{self.shop.id}: {method} {endpoint} answered {response.status_code}: "
                    f"{response.text[:300]}"
                )
            if attempt >= self.retry.max_attempts:
                raise PlatformUnavailable(
                    f"{self.shop.id}: {method} {endpoint} still answered {response.status_code} after "
                    f"{attempt} attempts; the task will retry later"
                )
            delay = self.retry.backoff(attempt)
            if response.status_code == 429:
                self.stats["throttled"] += 1
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                if retry_after is not None:
                    if retry_after > self.retry.max_retry_after:
                        raise PlatformUnavailable(
                            f"{self.shop.id}: rate limited for {retry_after:.0f}s, longer than the "
                            f"{self.retry.max_retry_after:.0f}s this task waits; it will retry later"
                        )
                    delay = retry_after
            log.warning(
                "%s: %s answered %d, retry %d in %.1fs",
                self.shop.id,
                endpoint,
                response.status_code,
                attempt,
                delay,
            )
            self.stats["retried"] += 1
            self.retry.sleep(delay)
