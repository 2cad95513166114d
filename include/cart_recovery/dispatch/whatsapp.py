"""WhatsApp Cloud API client: template and text sends, paced, retried where safe, and each of
Meta's answers turned into an ``Outcome`` the dispatcher acts on.

Exactly-once is the dispatcher's job (the outbox); this client's part is never to send twice on
its own. So it retries a send only when Meta certainly did not take it: a 130429 (throughput),
a 5xx, or a connection that was never made. Once the request may have reached Meta (a read
timeout, a connection dropped before the answer) the result is ``UNKNOWN`` and nothing is
retried: the status callbacks, matched on ``biz_opaque_callback_data``, settle it later.

How answers map (Meta's error codes, developers.facebook.com/documentation/business-messaging/
whatsapp/support/error-codes):

| answer | outcome |
|---|---|
| 2xx with ``messages[0].id`` | SENT (the ``wamid.`` id) |
| 130429, HTTP 429, 5xx, no connection | retried with exponential backoff and jitter, then RETRY |
| 401/403 (token, permissions, account locked) | RETRY at once (see below) |
| read timeout, connection dropped, 2xx without an id | UNKNOWN (never retried) |
| 131047 (24 h window closed), 131026 (not on WhatsApp) | FALLBACK (try email) |
| 131050 (stopped promotions) | STOP |
| 131056 (pair rate) | DEFER |
| 132000, 132001 and any other 4xx | REJECTED |

A 401 or 403 is about the connection, not the message: nothing was sent, and every other message
would fail alike until an operator fixes the token, so the row goes back to the queue rather than
failing for good.

All sends of one client share one pooled ``aiohttp.ClientSession`` (created on the first send,
in the running event loop) and one rate limiter at the connection's ``messages_per_second``, so
concurrent sends (``asyncio.gather``) stay under the business number's throughput. aiohttp, not
httpx: at 1,000 messages per second httpx's pool (it scans every connection for every queued
request) cost the dispatcher milliseconds of CPU per message (docs/dispatch.md, "Throughput").
aiohttp never re-sends a POST on its own (it retries only idempotent methods on a reused
connection) and follows no redirect here, so what reaches Meta is decided by this module alone.

What went wrong on the wire is told in the same words whatever the HTTP library:
``ConnectError`` (no connection could be made), ``ConnectTimeout`` (no connection, or no free
one, in time), both "not sent"; ``ReadTimeout`` (no answer in time) and ``RemoteProtocolError``
(the connection dropped or the answer was not HTTP), both "no answer".
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import yarl

from cart_recovery.connections import WHATSAPP_CONN_ID, env_var_name, get_connection
from cart_recovery.dispatch.message import Outcome, SendResult
from cart_recovery.errors import ConfigurationError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
DEFAULT_MESSAGES_PER_SECOND = 80.0
MAX_CALLBACK_DATA = 512  # Meta's limit on biz_opaque_callback_data
# Sends in flight (pooled connections): enough to keep the limit busy while each answer takes this
# long (Meta is an internet round trip away), at least MIN_CONNECTIONS and at most MAX_CONNECTIONS.
ANSWER_TIME_BUDGET_S = 0.5
MIN_CONNECTIONS = 64
MAX_CONNECTIONS = 512

THROUGHPUT_CODES = frozenset({130429})
FALLBACK_CODES = frozenset({131047, 131026})
STOP_CODES = frozenset({131050})
DEFER_CODES = frozenset({131056})

Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """A token bucket shared by concurrent sends: ``burst`` tokens, refilled at ``rate`` per second.

    Kept as the bucket's theoretical arrival time (GCRA, the same arithmetic), so each caller
    reserves its slot without a lock and then sleeps until it; callers are served in arrival order.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a rate limiter needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate = rate
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0  # when the bucket would be full again if nobody else asked

    def reserve(self) -> float:
        """Take one token; the seconds to wait before using it."""
        now = self._clock()
        arrival = max(self._next, now)
        self._next = arrival + self._interval
        return max(0.0, arrival - self._tolerance - now)

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await self._sleep(wait)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of sends Meta did not take: ``attempts`` tries in all, waiting about
    ``base_delay * 2**n`` (capped at ``max_delay``, half of it random) between them."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError(f"a retry policy needs attempts >= 1 and delays >= 0: {self}")

    def delay(self, retry: int, jitter: float) -> float:
        """The wait before retry number ``retry`` (1, 2, ...); ``jitter`` in [0, 1)."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (retry - 1))
        return ceiling / 2 + ceiling / 2 * jitter


@dataclass(frozen=True)
class Timeouts:
    """Seconds a send may wait: ``read`` for the answer (between bytes), ``connect`` for a new
    connection, ``pool`` for a free one of the pool's. The first is "no answer" (UNKNOWN), the
    other two "not sent" (RETRY). aiohttp bounds the wait for a connection as a whole, so a send
    gets one within ``pool + connect`` seconds or is not sent."""

    read: float = 15.0
    connect: float = 5.0
    pool: float = 60.0

    @classmethod
    def of(cls, value: Any) -> Timeouts:
        """From seconds (the read timeout), a ``Timeouts``, or any object with ``read``,
        ``connect`` and ``pool`` seconds (an ``httpx.Timeout``); None: the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, int | float):
            return cls(read=float(value))
        default = cls()
        read, connect, pool = (getattr(value, name, None) for name in ("read", "connect", "pool"))
        return cls(
            read=default.read if read is None else float(read),
            connect=default.connect if connect is None else float(connect),
            pool=default.pool if pool is None else float(pool),
        )

    def client_timeout(self) -> aiohttp.ClientTimeout:
        # aiohttp's ``connect`` covers the wait for a pooled connection and the new connection
        return aiohttp.ClientTimeout(
            total=None, connect=self.pool + self.connect, sock_connect=self.connect, sock_read=self.read
        )


class WhatsAppClient:
    """Sends through one business phone number; use ``async with`` so the pool is closed."""

    def __init__(
        self,
        *,
        access_token: str,
        phone_number_id: str,
        base_url: str = DEFAULT_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        messages_per_second: float = DEFAULT_MESSAGES_PER_SECOND,
        timeout: Timeouts | float | Any = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        limiter: RateLimiter | None = None,
        max_connections: int | None = None,
    ) -> None:
        if not access_token or not phone_number_id:
            raise ConfigurationError("a WhatsApp client needs an access token and a phone_number_id")
        if not base_url.startswith(("https://", "http://")):
            raise ConfigurationError(
                f"WhatsApp API base URL must start with https:// or http://: {base_url!r}"
            )
        self.url = f"{base_url.rstrip('/')}/{api_version}/{phone_number_id}/messages"
        self._url = yarl.URL(self.url)  # parsed once, not per send
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter(messages_per_second)
        self.timeouts = Timeouts.of(timeout)
        self._sleep = sleep
        self._jitter = jitter
        self._headers = {"Authorization": f"Bearer {access_token}", "Content-Type": "application/json"}
        self.max_connections = max_connections or connections_for(self.limiter.rate)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def from_connection(cls, conn_id: str = WHATSAPP_CONN_ID, **options: Any) -> WhatsAppClient:
        """The client for an Airflow connection (``AIRFLOW_CONN_<ID>`` outside Airflow): host = the
        API base URL, password = the access token, extra ``phone_number_id``, ``api_version``
        (default v21.0), ``messages_per_second`` (default 80). ``options`` go to the constructor."""
        conn = get_connection(conn_id)
        extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
        where = f"Airflow connection {conn_id!r} ({env_var_name(conn_id)})"
        token = (conn.password or "").strip()
        if not token:
            raise ConfigurationError(f"{where} has no access token: set its password")
        phone_number_id = str(extra.get("phone_number_id") or "").strip()
        if not phone_number_id:
            raise ConfigurationError(
                f'{where} has no phone_number_id: add "extra": {{"phone_number_id": ...}}'
            )
        try:
            rate = float(extra.get("messages_per_second", DEFAULT_MESSAGES_PER_SECOND))
        except (TypeError, ValueError):
            rate = 0.0
        if rate <= 0:
            raise ConfigurationError(f"{where}: messages_per_second must be a positive number")
        return cls(
            access_token=token,
            phone_number_id=phone_number_id,
            base_url=_base_url(conn.host, conn.port, conn.schema),
            api_version=str(extra.get("api_version") or DEFAULT_API_VERSION),
            messages_per_second=rate,
            **options,
        )

    async def __aenter__(self) -> WhatsAppClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None and not session.closed:
            await session.close()

    def _http(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop (a new one if the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self.timeouts.client_timeout(),
                connector=aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0),
                json_serialize=_dumps,
                raise_for_status=False,
            )
            self._loop = loop
        return self._session

    async def send_template(
        self,
        to: str,
        template: str,
        language: str,
        parameters: Sequence[str],
        callback_data: str | None = None,
    ) -> SendResult:
        """Send an approved template with its body parameters, in order ({{1}}, {{2}}, ...)."""
        if not template or not language:
            raise ValueError("a template send needs the template's name and language")
        if isinstance(parameters, str) or any(not isinstance(p, str) or not p.strip() for p in parameters):
            raise ValueError(f"template {template}: every body parameter must be non-empty text")
        body: dict[str, Any] = {"name": template, "language": {"code": language}}
        if parameters:
            body["components"] = [
                {"type": "body", "parameters": [{"type": "text", "text": p} for p in parameters]}
            ]
        return await self._send(to, {"type": "template", "template": body}, callback_data)

    async def send_text(self, to: str, text: str, callback_data: str | None = None) -> SendResult:
        """Send free-form text: only within 24 hours of the person's last message (else FALLBACK)."""
        if not text:
            raise ValueError("a text send needs a body")
        return await self._send(to, {"type": "text", "text": {"body": text}}, callback_data)

    async def _send(self, to: str, content: dict[str, Any], callback_data: str | None) -> SendResult:
        if not to or not isinstance(to, str):
            raise ValueError("a WhatsApp send needs the recipient's phone number")
        if callback_data is not None and len(callback_data) > MAX_CALLBACK_DATA:
            raise ValueError(f"callback_data is longer than Meta's {MAX_CALLBACK_DATA} characters")
        payload = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, **content}
        if callback_data is not None:
            payload["biz_opaque_callback_data"] = callback_data
        body = _dumps(payload)
        http = self._http()
        result = SendResult(Outcome.RETRY, error="not attempted")
        for attempt in range(1, self.retry.attempts + 1):
            if attempt > 1:
                await self._sleep(self.retry.delay(attempt - 1, self._jitter()))
            await self.limiter.acquire()
            try:
                async with http.post(self._url, data=body, allow_redirects=False) as response:
                    status, raw = response.status, await response.read()
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                # No connection was made (or none was free): nothing reached Meta.
                result, again = SendResult(Outcome.RETRY, error=f"not sent: {_describe(exc)}"), True
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                # No answer in time, connection dropped: the request may have been taken.
                log.warning("WhatsApp send to %s: no answer (%s); not retried", _masked(to), _describe(exc))
                return SendResult(Outcome.UNKNOWN, error=f"no answer: {_describe(exc)}")
            else:
                result, again = classify(status, _json(raw))
            if not again:
                return result
            log.info("WhatsApp send to %s: attempt %d: %s", _masked(to), attempt, result.error)
        return result


def connections_for(messages_per_second: float) -> int:
    """Sends to keep in flight at this rate: 64, or the rate's ``ANSWER_TIME_BUDGET_S`` worth
    (250 at 500/s, 500 at 1,000/s), so a provider's latency does not cap the rate below the limit;
    at most 512."""
    wanted = math.ceil(messages_per_second * ANSWER_TIME_BUDGET_S)
    return min(MAX_CONNECTIONS, max(MIN_CONNECTIONS, wanted))


def classify(status: int, body: Any) -> tuple[SendResult, bool]:
    """One answer of the messages endpoint as a ``SendResult``, and whether to try it again now."""
    answer = body if isinstance(body, dict) else {"http_status": status, "body": body}
    if 200 <= status < 300:
        messages = answer.get("messages")
        message_id = messages[0].get("id") if isinstance(messages, list) and messages else None
        if isinstance(message_id, str) and message_id:
            return SendResult(Outcome.SENT, provider_message_id=message_id, response=answer), False
        return SendResult(
            Outcome.UNKNOWN, error=f"HTTP {status} without a message id", response=answer
        ), False
    error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
    code = error.get("code") if isinstance(error.get("code"), int) else None
    details = (
        (error.get("error_data") or {}).get("details") if isinstance(error.get("error_data"), dict) else None
    )
    text = ": ".join(str(part) for part in (error.get("message"), details) if part) or f"HTTP {status}"

    def result(outcome: Outcome) -> SendResult:
        return SendResult(
            outcome,
            error_code=str(code) if code is not None else f"HTTP {status}",
            error=text,
            response=answer,
        )

    if code in THROUGHPUT_CODES or status == 429 or status >= 500:
        return result(Outcome.RETRY), True
    if status in (401, 403):
        return result(Outcome.RETRY), False
    if code in FALLBACK_CODES:
        return result(Outcome.FALLBACK), False
    if code in STOP_CODES:
        return result(Outcome.STOP), False
    if code in DEFER_CODES:
        return result(Outcome.DEFER), False
    if 400 <= status < 500:
        return result(Outcome.REJECTED), False
    return result(Outcome.UNKNOWN), False  # 1xx/3xx: nothing says whether it was taken


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def _dumps(payload: Any) -> bytes:
    return _encoder.encode(payload)


def _json(raw: bytes) -> Any:
    """An answer's JSON; its first 2,000 characters as text when it is not JSON."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return raw[:8000].decode("utf-8", errors="replace")[:2000]


def _masked(number: str) -> str:
    """A phone number for the logs: its last three digits only (logs outlive a redact request)."""
    return "…" + number[-3:]


def _describe(exc: BaseException) -> str:
    """The failure in the client's words (see the module docstring), then aiohttp's."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        kind = "ConnectError"
    elif isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = "ConnectTimeout"
    elif isinstance(exc, TimeoutError):  # aiohttp's SocketTimeoutError is one
        kind = "ReadTimeout"
    else:  # ServerDisconnectedError, a payload or HTTP parse error, a reset connection
        kind = "RemoteProtocolError"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{kind} ({detail})"


def _base_url(host: str | None, port: int | None, scheme: str | None) -> str:
    """The API base URL from a connection's host (with or without a scheme, as HttpHook reads it)."""
    host = (host or "").strip().rstrip("/")
    if not host:
        return DEFAULT_BASE_URL
    if "://" not in host:
        host = f"{scheme or 'https'}://{host}"
    if port:
        scheme_part, rest = host.split("://", 1)
        authority, _, path = rest.partition("/")
        if ":" not in authority:
            host = f"{scheme_part}://{authority}:{port}" + (f"/{path}" if path else "")
    return host
