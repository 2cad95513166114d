"""Fake Ideasoft Admin API: OAuth2 tokens and ``/admin-api/<resource>`` listings.

``POST /oauth/v2/token`` grants ``client_credentials`` and ``refresh_token`` (access tokens live
``Knobs.token_ttl`` seconds, 86400 by default); every listing checks ``Authorization: Bearer``.
Listings take ``page``, ``limit`` (at most 100), ``sort`` and the (unverified) update window
``startUpdatedAt``/``endUpdatedAt``, and answer a JSON array with a ``Total-Count`` header.
"""

from __future__ import annotations

import secrets
import threading
import time
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cart_recovery.shops import Platform
from cart_recovery.simulator.data import Cart, Customer, Order, Product, iso
from cart_recovery.simulator.state import SimulatorState, page

MAX_LIMIT = 100


def ideasoft_member(c: Customer) -> dict:
    return {
        "id": c.id % 10_000_000,
        "firstname": c.first_name,
        "surname": c.last_name,
        "email": c.email,
        "phoneNumber": c.phone,
        "allowedToCampaigns": c.email_consent and c.whatsapp_consent,
        "createdAt": iso(c.created_at),
        "updatedAt": iso(c.updated_at),
    }


def ideasoft_cart(cart: Cart) -> dict:
    member = None
    if cart.customer:
        member = {**ideasoft_member(cart.customer), "email": cart.email, "phoneNumber": cart.phone}
        member = {
            k: member[k] for k in ("id", "firstname", "surname", "email", "phoneNumber", "allowedToCampaigns")
        }
    return {
        "id": cart.id % 10_000_000,
        "member": member,
        "items": [
            {
                "product": {"id": i.product.id % 10_000_000, "name": i.product.title},
                "quantity": i.quantity,
                "price": float(i.price),
            }
            for i in cart.items
        ],
        "amount": float(cart.total),
        "currency": cart.currency,
        "createdAt": iso(cart.created_at),
        "updatedAt": iso(cart.updated_at),
        "isOrdered": cart.completed_at is not None,
    }


def ideasoft_order(o: Order) -> dict:
    return {
        "id": o.id % 10_000_000,
        "member": {"id": o.customer.id % 10_000_000, "email": o.email} if o.customer else None,
        "amount": float(o.total),
        "currency": o.currency,
        "couponCode": o.coupon_code,
        "createdAt": iso(o.created_at),
        "updatedAt": iso(o.updated_at),
    }


def ideasoft_product(p: Product) -> dict:
    return {
        "id": p.id % 10_000_000,
        "name": p.title,
        "sku": f"SKU-{p.id % 100000}",
        "price1": float(p.variants[0].price),
        "currency": {"code": "TRY"},
        "stockAmount": sum(v.inventory_quantity for v in p.variants),
        "options": [{"title": "Beden", "values": [v.title for v in p.variants]}]
        if p.product_type == "apparel"
        else [],
        "sizeChart": p.size_chart,
        "updatedAt": iso(p.updated_at),
    }


class TokenStore:
    def __init__(self) -> None:
        self._access: dict[str, tuple[str, float]] = {}
        self._refresh: dict[str, str] = {}
        self._lock = threading.Lock()

    def issue(self, shop_id: str, ttl: int) -> dict:
        access, refresh = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        with self._lock:
            self._access[access] = (shop_id, time.monotonic() + ttl)
            self._refresh[refresh] = shop_id
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": ttl,
            "refresh_token": refresh,
            "scope": "admin",
        }

    def redeem_refresh(self, refresh: str, shop_id: str) -> bool:
        with self._lock:
            return self._refresh.pop(refresh, None) == shop_id

    def check(self, access: str, shop_id: str) -> str | None:
        """None when valid, else the OAuth2 error description."""
        entry = self._access.get(access)
        if entry is None or entry[0] != shop_id:
            return "The access token provided is invalid."
        if time.monotonic() >= entry[1]:
            return "The access token provided has expired."
        return None


def router(state: SimulatorState) -> APIRouter:
    api = APIRouter()
    tokens = TokenStore()

    @api.post("/shops/{shop_id}/oauth/v2/token")
    async def token(shop_id: str, request: Request):
        data = state.shop(shop_id, Platform.IDEASOFT)
        form = dict(await request.form()) or dict(request.query_params)
        grant = form.get("grant_type")
        if (form.get("client_id"), form.get("client_secret")) != (data.shop.api_key, data.shop.api_secret):
            return JSONResponse(
                {"error": "invalid_client", "error_description": "Client authentication failed"},
                status_code=401,
            )
        if grant == "client_credentials":
            pass
        elif grant == "refresh_token":
            if not tokens.redeem_refresh(str(form.get("refresh_token")), shop_id):
                return JSONResponse(
                    {"error": "invalid_grant", "error_description": "Invalid refresh token"}, status_code=400
                )
        else:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        state.count(shop_id, f"token:{grant}")
        return JSONResponse(tokens.issue(shop_id, state.knobs.token_ttl))

    def listing(resource: str, source, render):
        async def handler(shop_id: str, request: Request):
            state.shop(shop_id, Platform.IDEASOFT)
            header = request.headers.get("Authorization", "")
            problem = (
                tokens.check(header[7:], shop_id)
                if header.startswith("Bearer ")
                else ("An access token is required.")
            )
            if problem:
                state.count(shop_id, "unauthorised")
                return JSONResponse(
                    {"error": "invalid_token", "error_description": problem},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
            failure = state.injected_failure(shop_id)
            if failure is not None:
                return failure
            data = state.shops[shop_id]
            params = request.query_params
            try:
                number = 1 if state.knobs.ignore_paging else int(params.get("page", 1))
                limit = min(int(params.get("limit", 20)), MAX_LIMIT)
                since = params.get("startUpdatedAt")
                until = params.get("endUpdatedAt")
                since_at = datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
                until_at = datetime.fromisoformat(until.replace("Z", "+00:00")) if until else None
            except ValueError as exc:
                return JSONResponse({"errorMessage": f"Invalid parameter: {exc}"}, status_code=400)
            chosen = state.listing(
                (shop_id, resource),
                lambda: source(data),
                lambda r: r.updated_at,
                since_at,
                until_at,
                first_page=number <= 1,
            )
            return JSONResponse(
                [render(r) for r in page(chosen, number, limit)], headers={"Total-Count": str(len(chosen))}
            )

        api.add_api_route(f"/shops/{{shop_id}}/admin-api/{resource}", handler, methods=["GET"])

    listing("abandoned_carts", lambda d: d.carts, ideasoft_cart)
    listing("orders", lambda d: d.orders, ideasoft_order)
    listing("members", lambda d: d.customers, ideasoft_member)
    listing("products", lambda d: d.products, ideasoft_product)
    return api
