"""Ticimax: WCF/SOAP 1.1 services, plain XML over the http hook (no WSDL needed).

Connection: ``password`` = ``UyeKodu``. Carts from ``SiparisServis.svc`` ``SelectSepet``, orders
from ``SelectSiparis``, members with their consent flags from ``UyeServis.svc`` ``SelectUyeler``.
Ticimax sends local times without an offset; they are read in the shop's time zone. A SOAP Fault
(HTTP 500 with a ``Fault`` body) is an answer, not an outage, and is not retried. The operation
and paging parameter names are unverified (see shared/DOMAIN.md); they live in ``_OPERATIONS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar
from xml.etree import ElementTree as ET
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import requests

from cart_recovery.platforms.base import (
    PageGuard,
    PlatformAuthError,
    PlatformClient,
    PlatformError,
    PolledRecord,
    Window,
    decimal_text,
    parse_time,
)

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
TEMPURI = "http://tempuri.org/"
MAX_PAGE = 200

# entity -> (service, operation, id field, how the window and paging are passed)
_OPERATIONS = {
    "cart": ("SiparisServis", "SelectSepet", "SepetID", "flat"),
    "order": ("SiparisServis", "SelectSiparis", "SiparisID", "filter"),
    "customer": ("UyeServis", "SelectUyeler", "UyeID", "filter"),
}
_INTEGER_FIELDS = {"SepetID", "SiparisID", "UyeID", "UrunID", "Adet"}
_DECIMAL_FIELDS = {"ToplamTutar", "Fiyat"}


def _local(moment, tz: str) -> str:
    return moment.astimezone(ZoneInfo(tz)).replace(tzinfo=None).isoformat(timespec="seconds")


def envelope(operation: str, member_code: str, parameters: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xmlns:s="{SOAP_ENV}"><s:Body>'
        f'<{operation} xmlns="{TEMPURI}"><UyeKodu>{escape(member_code)}</UyeKodu>{parameters}</{operation}>'
        f"</s:Body></s:Envelope>"
    ).encode()


def _parameters(style: str, since: str, until: str, start: int, size: int) -> str:
    if style == "flat":
        return (
            f"<SepetID>0</SepetID><UyeID>0</UyeID><BaslangicTarihi>{since}</BaslangicTarihi>"
            f"<BitisTarihi>{until}</BitisTarihi><BaslangicIndex>{start}</BaslangicIndex>"
            f"<KayitSayisi>{size}</KayitSayisi>"
        )
    return (
        f"<filtre><GuncellemeTarihiBaslangic>{since}</GuncellemeTarihiBaslangic>"
        f"<GuncellemeTarihiBitis>{until}</GuncellemeTarihiBitis></filtre>"
        f"<sayfalama><BaslangicIndex>{start}</BaslangicIndex><KayitSayisi>{size}</KayitSayisi>"
        f"<SiralamaDegeri>GuncellemeTarihi</SiralamaDegeri><SiralamaYonu>ASC</SiralamaYonu></sayfalama>"
    )


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def element_to_dict(element: ET.Element) -> dict:
    """A WCF data contract as a dict: ids and quantities int, flags bool, amounts decimal text."""
    record: dict = {}
    for child in element:
        name = _local_name(child.tag)
        if len(child):
            record[name] = [element_to_dict(item) for item in child]
        elif child.get(XSI_NIL) == "true":
            record[name] = None
        else:
            text = (child.text or "").strip()
            if text in ("true", "false"):
                record[name] = text == "true"
            elif name in _INTEGER_FIELDS and text.lstrip("-").isdigit():
                record[name] = int(text)
            elif name in _DECIMAL_FIELDS:
                record[name] = decimal_text(text)
            else:
                record[name] = text
    return record


def polled_record(entity: str, payload: dict, id_field: str, tz: str) -> PolledRecord:
    record_id = payload.get(id_field)
    return PolledRecord(
        entity=entity,
        record_id=str(record_id) if record_id not in (None, "") else None,
        updated_at=parse_time(payload.get("GuncellemeTarihi"), tz),
        created_at=parse_time(
            payload.get("SepetTarihi") or payload.get("SiparisTarihi") or payload.get("KayitTarihi"), tz
        ),
        payload=payload,
        currency=payload.get("ParaBirimi"),
        total=payload.get("ToplamTutar"),
        email=payload.get("Mail") or None,
        phone=payload.get("CepTelefonu") or None,
    )


class TicimaxClient(PlatformClient):
    platform = "ticimax"
    entities: ClassVar[tuple[str, ...]] = ("cart", "order", "customer")
    default_page_size: ClassVar[int] = MAX_PAGE
    use_connection_login_as_basic_auth = False

    def retryable(self, response: requests.Response) -> bool:
        if response.status_code == 500 and b"Fault" in response.content[:2000]:
            return False
        return super().retryable(response)

    def _call(self, service: str, operation: str, body: bytes) -> ET.Element:
        headers = {
            "Content-Type": "text/xml; charset=utf-8",
            "SOAPAction": f'"{TEMPURI}I{service}/{operation}"',
        }
        try:
            response = self.request("POST", f"Servis/{service}.svc", data=body, headers=headers)
        except PlatformError as exc:
            if "UyeKodu" in str(exc):
                raise PlatformAuthError(
                    f"{self.shop.id}: Ticimax rejected the UyeKodu; check the password of "
                    f"the Airflow connection {self.hook.http_conn_id!r}"
                ) from exc
            raise
        root = ET.fromstring(response.content)
        result = root.find(f".//{{{TEMPURI}}}{operation}Result")
        if result is None:
            raise PlatformError(f"{self.shop.id}: Ticimax {operation} answered without {operation}Result")
        return result

    def fetch(self, entity: str, window: Window) -> Iterator[PolledRecord]:
        service, operation, id_field, style = _OPERATIONS[entity]
        tz = self.shop.timezone
        since = _local(window.since, tz) if window.since is not None else "2000-01-01T00:00:00"
        until = _local(window.until, tz)
        size = min(self.page_size, MAX_PAGE)
        start = 0
        member_code = self.password
        guard = PageGuard(self.shop.id, entity)
        while True:
            result = self._call(
                service,
                operation,
                envelope(operation, member_code, _parameters(style, since, until, start, size)),
            )
            items = list(result)
            converted = [polled_record(entity, element_to_dict(item), id_field, tz) for item in items]
            guard.check(converted)
            for record in converted:
                if record.updated_at is None or record.updated_at <= window.until:
                    yield record
            if len(items) < size:
                return
            start += size
