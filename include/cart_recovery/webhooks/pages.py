"""The links in recovery messages: ``/r/<token>`` (click, then the cart), ``/u/<token>`` (unsubscribe).

- ``GET /r/<token>``: a genuine click token records the click on its outbox row (``clicked_at``,
  the first click wins) and answers 302 to the row's ``cart_url``. The target comes only from the
  database (never from the request), so this is no open redirect. Link-preview fetchers (Meta's
  crawler fetches the links in WhatsApp messages, chat apps unfurl them) are redirected without
  counting a click; ``HEAD`` never counts either.
- ``GET /u/<token>``: a page naming the address that will be unsubscribed, with a button that
  POSTs. A GET never unsubscribes: mail scanners and previews follow every link in an email.
- ``POST /u/<token>``: revokes the address's email consent for the row's shop (source
  ``email_unsubscribe``) and shows that it is done; idempotent. It is also the RFC 8058 one-click
  target (``List-Unsubscribe-Post: List-Unsubscribe=One-Click``): a mail client POSTs the body
  ``List-Unsubscribe=One-Click`` with no cookies and no page, and gets the same 200.

Anything not genuine (forged, altered, the other kind of token, a row without a cart_url or not
an email) answers the same 404, so a token's answer tells nothing about other rows. Without
``CART_RECOVERY_LINK_SECRET``/``CART_RECOVERY_PUBLIC_URL`` every link answers 404 (the service warned at
startup). Pages are Jinja2 with autoescaping, in the row's language (Turkish or English).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from cart_recovery.dispatch.links import CLICK, UNSUBSCRIBE, LinkSigner
from cart_recovery.webhooks import funnel
from cart_recovery.webhooks.config import WebhookConfig
from cart_recovery.webhooks.store import DatabaseUnavailable, EventStore

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_FORM_BYTES = 4096
RETRY_AFTER_S = "5"
# User agents of link-preview fetchers, which open a link without a person clicking it.
PREVIEW_AGENTS = re.compile(
    r"facebookexternalhit|facebot|whatsapp/|telegrambot|slackbot|twitterbot|discordbot|linkedinbot|"
    r"skypeuripreview|googlebot|bingbot|applebot|embedly|iframely",
    re.IGNORECASE,
)
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}

_TEXTS = {
    "en": {
        "lang": "en",
        "title": "Unsubscribe",
        "confirm": "Stop cart reminder emails to {address}{shop}?",
        "button": "Unsubscribe",
        "done": "Done: {address} will receive no more cart reminder emails{shop}.",
        "already": "{address} is already unsubscribed from cart reminder emails{shop}.",
        "from": " from {shop}",
    },
    "tr": {
        "lang": "tr",
        "title": "Abonelikten çık",
        "confirm": "{address} adresine sepet hatırlatma e-postaları{shop} gönderilmesin mi?",
        "button": "Abonelikten çık",
        "done": "Tamam: {address} adresine artık sepet hatırlatma e-postası{shop} gönderilmeyecek.",
        "already": "{address} sepet hatırlatma e-postalarından{shop} zaten çıkmış.",
        "from": " ({shop})",
    },
}

_PAGE = """<!doctype html>
<html lang="{{ t.lang }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>{{ t.title }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;line-height:1.5}
button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}</style>
</head>
<body>
<h1>{{ t.title }}</h1>
{% if state == "confirm" %}
<p>{{ t.confirm.format(address=address, shop=shop) }}</p>
<form method="post">
<input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">{{ t.button }}</button>
</form>
{% elif state == "done" %}
<p>{{ t.done.format(address=address, shop=shop) }}</p>
{% else %}
<p>{{ t.already.format(address=address, shop=shop) }}</p>
{% endif %}
</body>
</html>
"""

_templates = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
_page = _templates.from_string(_PAGE)


def render_page(state: str, target: funnel.UnsubscribeTarget, shop: str | None) -> str:
    """The unsubscribe page: ``confirm`` (with the form), ``done`` or ``already``."""
    texts = _TEXTS.get(target.language or "", _TEXTS["en"])
    shop_text = texts["from"].format(shop=shop) if shop else ""
    # format() runs on the template's text; Jinja2 escapes its result (address and shop included).
    return _page.render(t=texts, state=state, address=target.address, shop=shop_text)


def router(config: WebhookConfig, store: EventStore) -> APIRouter:
    signer: LinkSigner | None = config.links
    shop_names = {secret.shop.id: secret.shop.domain for secret in config.shops.values()}
    routes = APIRouter(tags=["links"])

    def genuine(kind: str, token: str) -> str:
        plan_key = signer.verify(kind, token) if signer is not None else None
        if plan_key is None:
            raise HTTPException(404, "not found")
        return plan_key

    async def database(work: Callable[[Any], T]) -> T:
        def run() -> T:
            def in_transaction(conn) -> T:
                with conn.cursor() as cur:
                    return work(cur)

            return store.run(in_transaction)

        try:
            return await run_in_threadpool(run)
        except DatabaseUnavailable as exc:
            log.error("Link not served, answering 503: %s", exc)
            raise HTTPException(
                503, "temporarily unavailable", headers={"Retry-After": RETRY_AFTER_S}
            ) from exc

    @routes.api_route(
        "/r/{token}",
        methods=["GET", "HEAD"],
        summary="Click link: records the click and redirects to the cart",
        status_code=302,
        responses={302: {"description": "to the cart"}, 404: {"description": "not a genuine link"}},
    )
    async def click(token: str, request: Request) -> Response:
        plan_key = genuine(CLICK, token)
        now = datetime.now(UTC)
        count = request.method == "GET" and not PREVIEW_AGENTS.search(request.headers.get("user-agent", ""))
        cart_url = await database(lambda cur: funnel.record_click(cur, plan_key, now, count=count))
        if cart_url is None:
            raise HTTPException(404, "not found")
        if urlsplit(cart_url).scheme not in ("https", "http"):
            log.error("Outbox row %s has a cart_url that is not http(s): not redirected", plan_key)
            raise HTTPException(404, "not found")
        return RedirectResponse(
            cart_url, status_code=302, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        )

    def page(state: str, target: funnel.UnsubscribeTarget) -> HTMLResponse:
        return HTMLResponse(render_page(state, target, shop_names.get(target.shop_id)), headers=_PAGE_HEADERS)

    @routes.get(
        "/u/{token}",
        summary="Unsubscribe page (asks to confirm; a GET never unsubscribes)",
        response_class=HTMLResponse,
        responses={404: {"description": "not a genuine link"}},
    )
    async def unsubscribe_page(token: str) -> HTMLResponse:
        plan_key = genuine(UNSUBSCRIBE, token)
        now = datetime.now(UTC)
        target = await database(lambda cur: funnel.unsubscribe_target(cur, plan_key, now))
        if target is None:
            raise HTTPException(404, "not found")
        return page("already" if target.revoked else "confirm", target)

    @routes.post(
        "/u/{token}",
        summary="Unsubscribe (the page's button and RFC 8058 one-click)",
        response_class=HTMLResponse,
        responses={404: {"description": "not a genuine link"}, 413: {"description": "body too large"}},
    )
    async def unsubscribe(token: str, request: Request) -> HTMLResponse:
        plan_key = genuine(UNSUBSCRIBE, token)
        # The body is the form's field or RFC 8058's List-Unsubscribe=One-Click; neither changes
        # what happens, but it is read (and bounded) so a client sending one is served.
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                raise HTTPException(413, f"body larger than {MAX_FORM_BYTES} bytes")
        now = datetime.now(UTC)
        target = await database(lambda cur: funnel.unsubscribe(cur, plan_key, now))
        if target is None:
            raise HTTPException(404, "not found")
        return page("done", target)

    return routes
