"""The FastAPI app: one route per platform, each verifying, storing and only then answering 2xx.

Checks, in order, each answered without storing anything:
415 the body is not JSON (Content-Type), 413 it is larger than the limit (Content-Length, then the
bytes actually read), 401 the shop is unknown or the signature does not match, 400 the body is
not a JSON object (or a required header is missing), 503 (with Retry-After) the database could
not commit it. 200 means committed: ``{"status": "stored"}``, or ``"duplicate"`` for a delivery
id already stored (the platform retried).

The shop platforms' ordinary deliveries (``POST`` with a JSON body, any topic but Shopify's
privacy topics) are served by :class:`ShopWebhookFastPath`, a plain ASGI handler in front of
FastAPI's routing, which answers exactly as the FastAPI routes do, verifies and parses on the event
loop and hands the insert to the store's group-commit thread. Everything else (WooCommerce's form
ping, the privacy topics, wrong content types, WhatsApp, health, the OpenAPI documents) goes
through the FastAPI routes below, which also document the shop routes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg2
from fastapi import BackgroundTasks, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from cart_recovery import __version__, phones, privacy
from cart_recovery.shops import Platform, Shop
from cart_recovery.webhooks import funnel, pages, signatures, whatsapp
from cart_recovery.webhooks.config import WebhookConfig
from cart_recovery.webhooks.platforms import WEBHOOK_HEADERS, WebhookHeaders
from cart_recovery.webhooks.store import DatabaseUnavailable, EventStore, WebhookEvent, insert_event

log = logging.getLogger(__name__)

RETRY_AFTER_S = "5"
_WOOCOMMERCE_PING = re.compile(rb"^webhook_id=\d+$")


class _InvalidJson(ValueError):
    pass


def _offline_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI 5 (reads OpenAPI 3.1) from ``swagger-ui-bundle-v2``, so it renders offline."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title}: API docs",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


def create_app(config: WebhookConfig | None = None) -> FastAPI:
    """The app; ``config`` defaults to the environment (shops file, connections, database URL)."""
    config = config or WebhookConfig.from_env()
    store = EventStore(config.database_url, max_connections=config.pool_size)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Privacy requests left pending by a crash or a database outage.
        countries = {secret.shop.id: secret.shop.country for secret in config.shops.values()}
        await run_in_threadpool(_process_open_privacy_requests, store, countries)
        yield
        store.close()

    app = FastAPI(
        title="cart-recovery webhooks",
        version=__version__,
        description=__doc__,
        lifespan=lifespan,
        docs_url=None,  # served below from local assets: FastAPI's default loads them from a CDN
    )
    _offline_docs(app)
    app.state.config = config
    app.state.store = store
    app.add_middleware(ShopWebhookFastPath, config=config, store=store)

    @app.get("/healthz", summary="Liveness, and whether the database answers")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "database": "ok" if store.ping() else "unavailable"}

    def shop_route(platform: Platform) -> None:
        headers = WEBHOOK_HEADERS[platform]

        async def receive(request: Request, background: BackgroundTasks) -> JSONResponse:
            return await _receive_shop_webhook(config, store, headers, request, background)

        receive.__name__ = f"receive_{platform.value}"
        app.post(
            f"/webhooks/{platform.value}",
            summary=f"{platform.value.capitalize()} webhook"
            + ("" if headers.verified else " (header names unverified)"),
            description=(
                f"Shop from `{headers.shop}`, signature `{headers.signature}` = base64(HMAC-SHA256(the "
                f"shop's webhook_secret, raw body)), topic `{headers.topic}`, delivery id "
                f"`{headers.delivery_id}` (sha256 of the body when absent)."
            ),
            responses=_ERROR_RESPONSES,
            openapi_extra=_openapi_extra(
                [headers.shop, headers.signature, headers.topic, headers.delivery_id]
            ),
        )(receive)

    for platform in WEBHOOK_HEADERS:
        shop_route(platform)

    @app.get(
        "/webhooks/whatsapp",
        summary="WhatsApp (Meta) verification handshake",
        response_class=PlainTextResponse,
        responses={403: {"description": "wrong verify token"}},
    )
    def whatsapp_handshake(
        mode: str = Query("", alias="hub.mode"),
        verify_token: str = Query("", alias="hub.verify_token"),
        challenge: str = Query("", alias="hub.challenge"),
    ) -> PlainTextResponse:
        expected = config.whatsapp.verify_token if config.whatsapp else None
        if (
            mode == "subscribe"
            and expected is not None
            and hmac.compare_digest(verify_token.encode(), expected.encode())
        ):
            return PlainTextResponse(challenge)
        raise HTTPException(403, "verify token does not match")

    @app.post(
        "/webhooks/whatsapp",
        summary="WhatsApp (Meta) messages and statuses",
        description=whatsapp.__doc__,
        responses=_ERROR_RESPONSES,
        openapi_extra=_openapi_extra(["X-Hub-Signature-256"]),
    )
    async def whatsapp_webhook(request: Request) -> JSONResponse:
        _check_content(request, config.max_body_bytes)
        if config.whatsapp is None:
            raise HTTPException(401, "WhatsApp is not configured (AIRFLOW_CONN_WHATSAPP_DEFAULT)")
        body = await _read_body(request, config.max_body_bytes)
        signature = request.headers.get("X-Hub-Signature-256")
        return await run_in_threadpool(_ingest_whatsapp, config, store, body, signature)

    app.include_router(pages.router(config, store))
    return app


# -- shop platforms -----------------------------------------------------------------------------


async def _receive_shop_webhook(
    config: WebhookConfig,
    store: EventStore,
    headers: WebhookHeaders,
    request: Request,
    background: BackgroundTasks,
) -> JSONResponse:
    if headers.platform is Platform.WOOCOMMERCE and _is_form(request) and _declared_size(request) <= 64:
        # WooCommerce pings a new webhook with an unsigned form body (webhook_id=<id>); a non-2xx
        # answer stops the shop owner from saving the webhook. Nothing to store.
        body = await _read_body(request, 64)
        if _WOOCOMMERCE_PING.match(body.strip()):
            return JSONResponse({"status": "ping"})
    _check_content(request, config.max_body_bytes)
    shop = config.find_shop(headers.platform, request.headers.get(headers.shop, ""))
    if shop is None:
        log.warning(
            "%s webhook from unknown shop %r", headers.platform.value, request.headers.get(headers.shop)
        )
        raise HTTPException(401, f"unknown shop in {headers.shop}")
    body = await _read_body(request, config.max_body_bytes)
    received_at = datetime.now(UTC)
    return await run_in_threadpool(
        _ingest_shop,
        store,
        headers,
        shop.shop,
        shop.secret,
        body,
        {name: request.headers.get(name) for name in (headers.signature, headers.topic, headers.delivery_id)},
        received_at,
        background,
    )


def verified_event(
    headers: WebhookHeaders,
    shop: Shop,
    secret: str,
    body: bytes,
    values: dict[str, str | None],
    received_at: datetime,
) -> tuple[WebhookEvent, Any]:
    """Signature (401), JSON (400) and topic (400) checks; the event to store and the parsed body.

    ``values`` maps the platform's signature, topic and delivery-id header names to their values.
    Shared by the FastAPI route and the ASGI fast path, so both answer exactly alike. The event
    carries the normal form of the payload's phone numbers, read in the shop's country.
    """
    shop_id = shop.id
    if not signatures.verify_base64(secret, body, values[headers.signature]):
        log.warning(
            "%s webhook for shop %s: bad or missing %s", headers.platform.value, shop_id, headers.signature
        )
        raise HTTPException(401, f"signature in {headers.signature} does not match the body")
    text, document = _parse_json(body)
    topic = (values[headers.topic] or "").strip()
    if not topic:
        raise HTTPException(400, f"missing {headers.topic} header")
    delivery_id = (values[headers.delivery_id] or "").strip() or "sha256:" + hashlib.sha256(body).hexdigest()
    numbers = tuple(phones.phone_rows(shop_id, shop.country, phones.phone_strings(document)))
    event = WebhookEvent(headers.platform.value, shop_id, topic, delivery_id, received_at, text, numbers)
    return event, document


def _ingest_shop(
    store: EventStore,
    headers: WebhookHeaders,
    shop: Shop,
    secret: str,
    body: bytes,
    values: dict[str, str | None],
    received_at: datetime,
    background: BackgroundTasks,
) -> JSONResponse:
    event, document = verified_event(headers, shop, secret, body, values, received_at)
    shop_id = shop.id
    topic, delivery_id = event.topic, event.delivery_id

    if headers.platform is Platform.SHOPIFY and topic in privacy.PRIVACY_TOPICS:

        def work(conn):
            with conn.cursor() as cur:
                event_id = insert_event(cur, event)
                request_id, status = privacy.record_request(
                    cur,
                    platform=event.platform,
                    shop_id=shop_id,
                    topic=topic,
                    delivery_id=delivery_id,
                    payload=document,
                    received_at=received_at,
                )
            return event_id, request_id, status

        event_id, request_id, status = _store(lambda: store.run(work))
        if status != "completed":
            background.add_task(_process_privacy_request, store, request_id, {shop_id: shop.country})
        new = event_id is not None
    else:
        new = _store(lambda: store.insert([event])) == 1
    return JSONResponse({"status": "stored" if new else "duplicate", "delivery_id": delivery_id})


class ShopWebhookFastPath:
    """ASGI middleware: ``POST /webhooks/{shopify,woocommerce,ideasoft}`` with a JSON body, served
    without FastAPI's request machinery and without a thread per request.

    Same checks, order, status codes, bodies and headers as :func:`_receive_shop_webhook` and
    :func:`_ingest_shop`; the event is committed (by the store's group-commit thread, together with
    other requests' events) before the 2xx is sent. Requests it does not take are passed on
    unchanged: not ``POST``, another path, a Content-Type other than ``application/json`` (the
    WooCommerce form ping, or a 415 from the route), and Shopify's privacy topics (which also write
    ``ops`` rows and start background work).
    """

    def __init__(self, app, *, config: WebhookConfig, store: EventStore) -> None:
        self.app = app
        self._config = config
        self._store = store
        self._routes = {
            f"/webhooks/{platform.value}": headers for platform, headers in WEBHOOK_HEADERS.items()
        }

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = self._routes.get(scope["path"])
            if headers is not None:
                values = _header_values(scope["headers"])
                if _media_type(values.get("content-type", "")) == "application/json" and not (
                    headers.platform is Platform.SHOPIFY
                    and values.get(headers.topic.lower(), "").strip() in privacy.PRIVACY_TOPICS
                ):
                    try:
                        status, content, extra = await self._handle(headers, values, receive)
                    except _Disconnected:
                        return
                    await _send_json(send, status, content, extra)
                    return
        await self.app(scope, receive, send)

    async def _handle(self, headers: WebhookHeaders, values: dict[str, str], receive):
        config = self._config
        limit = config.max_body_bytes
        declared = values.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return _error(400, "invalid Content-Length")
            if size > limit:
                return _error(413, f"body larger than {limit} bytes")
        domain = values.get(headers.shop.lower())
        shop = config.find_shop(headers.platform, domain or "")
        if shop is None:
            log.warning("%s webhook from unknown shop %r", headers.platform.value, domain)
            return _error(401, f"unknown shop in {headers.shop}")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return _error(413, f"body larger than {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        received_at = datetime.now(UTC)
        named = {
            name: values.get(name.lower()) for name in (headers.signature, headers.topic, headers.delivery_id)
        }
        try:
            event, _document = verified_event(headers, shop.shop, shop.secret, body, named, received_at)
            new = await _store_async(self._store.insert_async(event))
        except HTTPException as exc:
            return _error(exc.status_code, exc.detail, exc.headers)
        return 200, {"status": "stored" if new else "duplicate", "delivery_id": event.delivery_id}, None


class _Disconnected(Exception):
    pass


def _header_values(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-case name -> value, the first of repeated headers winning (as Starlette's ``get``)."""
    values: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key not in values:
            values[key] = value.decode("latin-1")
    return values


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _error(status: int, detail: str, headers: dict[str, str] | None = None):
    return status, {"detail": detail}, headers


async def _send_json(send, status: int, content: Any, extra: dict[str, str] | None) -> None:
    # As FastAPI's JSONResponse (and its HTTPException handler) renders it.
    body = json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()
    response_headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    if extra:
        response_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


# -- WhatsApp ---------------------------------------------------------------------------------


def _ingest_whatsapp(
    config: WebhookConfig, store: EventStore, body: bytes, signature: str | None
) -> JSONResponse:
    assert config.whatsapp is not None
    if not signatures.verify_meta(config.whatsapp.app_secret, body, signature):
        log.warning("WhatsApp webhook: bad or missing X-Hub-Signature-256")
        raise HTTPException(401, "signature in X-Hub-Signature-256 does not match the body")
    _text, document = _parse_json(body)
    received_at = datetime.now(UTC)
    events = [
        WebhookEvent("whatsapp", "", d.topic, d.delivery_id, received_at, d.payload)
        for d in whatsapp.split_deliveries(document, body)
    ]
    # Each new delivery settles the funnel in the transaction that stores it (funnel.py).
    stored = _store(
        lambda: store.insert_then(
            events,
            lambda cur, event: funnel.apply_whatsapp_event(cur, event.topic, event.payload, received_at),
        )
    )
    return JSONResponse(
        {"status": "stored" if stored else "duplicate", "deliveries": len(events), "stored": stored}
    )


# -- helpers ----------------------------------------------------------------------------------


def _store(write):
    """Run a database write; 503 (retry later) when the database is unavailable."""
    try:
        return write()
    except DatabaseUnavailable as exc:
        log.error("Webhook not stored, answering 503: %s", exc)
        raise HTTPException(
            503, "database unavailable, retry later", headers={"Retry-After": RETRY_AFTER_S}
        ) from exc
    except psycopg2.DataError as exc:
        # JSON that Python accepts but PostgreSQL's jsonb does not (e.g. \u0000).
        raise HTTPException(400, f"body is not storable JSON: {str(exc).strip()}") from exc
    except psycopg2.errors.UndefinedTable as exc:
        log.error("raw.webhook_events is missing: run `cart-recovery db upgrade` (%s)", exc)
        raise HTTPException(503, "database not migrated", headers={"Retry-After": RETRY_AFTER_S}) from exc


async def _store_async(pending):
    """Await a write handed to the group-commit thread; its errors answered as :func:`_store` does."""

    def outcome():
        return pending.result()

    try:
        return await pending
    except Exception:
        return _store(outcome)


def _process_privacy_request(store: EventStore, request_id: int, countries: dict[str, str]) -> None:
    try:
        store.run(lambda conn: privacy.process_request(conn, request_id, countries))
    except DatabaseUnavailable as exc:
        log.error("Privacy request %s stays pending (database unavailable: %s)", request_id, exc)


def _process_open_privacy_requests(store: EventStore, countries: dict[str, str]) -> None:
    try:
        pending = store.run(privacy.open_requests)
    except (DatabaseUnavailable, psycopg2.Error) as exc:
        log.warning("Could not look for pending privacy requests at startup: %s", exc)
        return
    for request_id in pending:
        _process_privacy_request(store, request_id, countries)


def _is_form(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == (
        "application/x-www-form-urlencoded"
    )


def _declared_size(request: Request) -> int:
    try:
        return int(request.headers.get("content-length", ""))
    except ValueError:
        return 1 << 62  # absent (chunked) or invalid: not a ping


def _check_content(request: Request, limit: int) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "Content-Type must be application/json")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise HTTPException(400, "invalid Content-Length") from exc
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) as soon as more than ``limit`` bytes arrived."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise _InvalidJson(f"{name} is not valid JSON")


def _parse_json(body: bytes) -> tuple[str, dict[str, Any]]:
    try:
        text = body.decode("utf-8")
        document = json.loads(text, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(400, f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise HTTPException(400, "body must be a JSON object")
    return text, document


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed JSON or a required header missing; nothing stored"},
    401: {"description": "unknown shop or signature mismatch; nothing stored"},
    413: {"description": "body over the size limit (CART_RECOVERY_WEBHOOK_MAX_BYTES); nothing stored"},
    415: {"description": "Content-Type is not application/json; nothing stored"},
    503: {"description": "database unavailable; nothing stored; retry after Retry-After seconds"},
}


def _openapi_extra(header_names: list[str]) -> dict[str, Any]:
    return {
        "parameters": [
            {"name": name, "in": "header", "required": False, "schema": {"type": "string"}}
            for name in header_names
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
    }
