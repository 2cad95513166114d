"""Fake Ticimax SOAP services (SOAP 1.1, WCF style): ``SiparisServis.svc`` and ``UyeServis.svc``.

Operations: ``SelectSepet`` (carts), ``SelectSiparis`` (orders) and ``SelectUyeler`` (members),
each authenticated by ``UyeKodu``. Times are the shop's local time without an offset, as WCF
``DateTime`` values usually are. Ticimax's real paging parameters are unverified: the fake takes
``BaslangicIndex``/``KayitSayisi`` (directly for ``SelectSepet``, inside the ``sayfalama``/``s``
element otherwise) and a ``GuncellemeTarihi`` window, and answers a SOAP Fault for a wrong key.
"""

from __future__ import annotations

from datetime import datetime
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import Response

from cart_recovery.shops import Platform
from cart_recovery.simulator.data import Cart, Customer, Order, ShopData
from cart_recovery.simulator.state import SimulatorState

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
TEMPURI = "http://tempuri.org/"
DATA_NS = "http://schemas.datacontract.org/2004/07/"
MAX_PAGE = 200


def _local(moment: datetime, tz: str) -> str:
    return moment.astimezone(ZoneInfo(tz)).replace(tzinfo=None).isoformat()


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(str(value))


def _element(name: str, fields: dict) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            parts.append(f'<a:{key} i:nil="true"/>')
        elif isinstance(value, list):
            parts.append(
                f"<a:{key}>" + "".join(_element(item_name, item) for item_name, item in value) + f"</a:{key}>"
            )
        else:
            parts.append(f"<a:{key}>{_value(value)}</a:{key}>")
    return f"<a:{name}>{''.join(parts)}</a:{name}>"


def ticimax_cart(cart: Cart, tz: str) -> dict:
    return {
        "SepetID": cart.id % 10_000_000,
        "UyeID": cart.customer.id % 10_000_000 if cart.customer else 0,
        "SepetTarihi": _local(cart.created_at, tz),
        "GuncellemeTarihi": _local(cart.updated_at, tz),
        "ParaBirimi": cart.currency,
        "ToplamTutar": str(cart.total),
        "Urunler": [
            (
                "WebSepetUrun",
                {
                    "UrunID": i.product.id % 10_000_000,
                    "UrunAdi": i.product.title,
                    "Adet": i.quantity,
                    "Fiyat": str(i.price),
                },
            )
            for i in cart.items
        ],
    }


def ticimax_member(c: Customer, tz: str) -> dict:
    return {
        "UyeID": c.id % 10_000_000,
        "Isim": c.first_name,
        "Soyisim": c.last_name,
        "Mail": c.email,
        "CepTelefonu": c.phone,
        "MailIzin": c.email_consent,
        "SmsIzin": c.whatsapp_consent,
        "KayitTarihi": _local(c.created_at, tz),
        "GuncellemeTarihi": _local(c.updated_at, tz),
    }


def ticimax_order(o: Order, tz: str) -> dict:
    return {
        "SiparisID": o.id % 10_000_000,
        "UyeID": o.customer.id % 10_000_000 if o.customer else 0,
        "SiparisTarihi": _local(o.created_at, tz),
        "GuncellemeTarihi": _local(o.updated_at, tz),
        "ToplamTutar": str(o.total),
        "ParaBirimi": o.currency,
        "KuponKodu": o.coupon_code,
    }


def envelope(inner: str) -> str:
    return f'<s:Envelope xmlns:s="{SOAP_ENV}"><s:Body>{inner}</s:Body></s:Envelope>'


def fault(message: str, code: str = "s:Client") -> Response:
    body = envelope(
        f'<s:Fault><faultcode>{code}</faultcode><faultstring xml:lang="tr-TR">'
        f"{escape(message)}</faultstring></s:Fault>"
    )
    return Response(body, status_code=500, media_type="text/xml; charset=utf-8")


def _params(operation: ET.Element) -> dict[str, str]:
    """Every leaf below the operation element by local name (the fake's parameters are unique)."""
    found = {}
    for element in operation.iter():
        if len(element) == 0 and element is not operation:
            found[element.tag.rsplit("}", 1)[-1]] = (element.text or "").strip()
    return found


def _window_bound(text: str | None, tz: str) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(tz))


_OPERATIONS = {
    # service -> operation -> (records, renderer, result item element name)
    "SiparisServis": {
        "SelectSepet": (lambda d: d.carts, ticimax_cart, "WebSepet"),
        "SelectSiparis": (lambda d: d.orders, ticimax_order, "WebSiparis"),
    },
    "UyeServis": {
        "SelectUyeler": (lambda d: d.customers, ticimax_member, "Uye"),
    },
}


def _answer(state: SimulatorState, data: ShopData, service: str, body: bytes) -> Response:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        return fault(f"Malformed SOAP envelope: {exc}")
    soap_body = root.find(f"{{{SOAP_ENV}}}Body")
    if soap_body is None or len(soap_body) == 0:
        return fault("SOAP Body missing")
    operation = soap_body[0]
    name = operation.tag.rsplit("}", 1)[-1]
    if name not in _OPERATIONS[service]:
        return fault(f"The operation {name} is not supported by {service}", "a:ActionNotSupported")
    params = _params(operation)
    if params.get("UyeKodu") != data.shop.api_key:
        return fault("Geçersiz UyeKodu (invalid member code)")
    tz = data.shop.timezone
    source, render, item = _OPERATIONS[service][name]
    try:
        since = _window_bound(params.get("BaslangicTarihi") or params.get("GuncellemeTarihiBaslangic"), tz)
        until = _window_bound(params.get("BitisTarihi") or params.get("GuncellemeTarihiBitis"), tz)
        start = 0 if state.knobs.ignore_paging else int(params.get("BaslangicIndex") or 0)
        size = min(int(params.get("KayitSayisi") or MAX_PAGE), MAX_PAGE)
    except ValueError as exc:
        return fault(f"Invalid parameter: {exc}")
    chosen = state.listing(
        (data.shop.id, service, name),
        lambda: source(data),
        lambda r: r.updated_at,
        since,
        until,
        first_page=start == 0,
    )[start : start + size]
    items = "".join(_element(item, render(r, tz)) for r in chosen)
    result = (
        f'<{name}Response xmlns="{TEMPURI}"><{name}Result xmlns:a="{DATA_NS}" '
        f'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">{items}</{name}Result></{name}Response>'
    )
    return Response(envelope(result), media_type="text/xml; charset=utf-8")


def router(state: SimulatorState) -> APIRouter:
    api = APIRouter()

    def endpoint(service: str):
        async def handler(shop_id: str, request: Request):
            data = state.shop(shop_id, Platform.TICIMAX)
            failure = state.injected_failure(shop_id)
            if failure is not None:
                return failure
            return _answer(state, data, service, await request.body())

        return handler

    for service in _OPERATIONS:
        api.add_api_route(
            f"/shops/{{shop_id}}/Servis/{service}.svc",
            endpoint(service),
            methods=["POST"],
            include_in_schema=False,
        )
    return api
