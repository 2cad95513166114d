"""Ideasoft: REST Admin API ``/admin-api/<resource>`` with OAuth2 bearer tokens.

Connection: ``login``/``password`` = OAuth2 client id/secret. The token comes from
``/oauth/v2/token`` (client credentials) and is refreshed with its refresh token before it expires
(at 90% of ``expires_in``, at most five minutes early); a 401 triggers one refresh and a retry.
Listings page with ``page``/``limit`` and filter on the (unverified) ``startUpdatedAt``/``endUpdatedAt``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import requests

from cart_recovery.platforms.base import (
    PageGuard,
    PlatformAuthError,
    PlatformClient,
    PolledRecord,
    Window,
    decimal_text,
    iso_utc,
    parse_time,
)

log = logging.getLogger(__name__)

MAX_LIMIT = 100
TOKEN_ENDPOINT = "oauth/v2/token"
_RESOURCES = {"cart": "abandoned_carts", "order": "orders", "customer": "members", "product": "products"}


def polled_record(entity: str, payload: dict) -> PolledRecord:
    record_id = payload.get("id")
    member = payload.get("member") or {}
    currency = payload.get("currency")
    if isinstance(currency, dict):
        currency = currency.get("code")
    return PolledRecord(
        entity=entity,
        record_id=str(record_id) if record_id not in (None, "") else None,
        updated_at=parse_time(payload.get("updatedAt")),
        created_at=parse_time(payload.get("createdAt")),
        payload=payload,
        currency=currency,
        total=decimal_text(payload.get("amount")),
        email=payload.get("email") or member.get("email"),
        phone=payload.get("phoneNumber") or member.get("phoneNumber"),
    )


class IdeasoftClient(PlatformClient):
    platform = "ideasoft"
    default_page_size: ClassVar[int] = MAX_LIMIT
    use_connection_login_as_basic_auth = False  # login/password are the OAuth2 client credentials

    def __init__(self, *args, clock: Callable[[], float] = time.monotonic, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self._access_token: str | None = None
        self._refresh_token: str | None = None
        self._refresh_at = 0.0
        self.token_grants: list[str] = []

    # -- OAuth2 ------------------------------------------------------------------------------------
    def _grant(self, grant_type: str, **fields: str) -> None:
        form = {
            "grant_type": grant_type,
            "client_id": self.login,
            "client_secret": self.password,
            **fields,
        }
        url = f"{self.base_url}/{TOKEN_ENDPOINT}"
        prepared = self.session.prepare_request(requests.Request("POST", url, data=form))
        response = self.hook.run_and_check(
            self.session, prepared, {"check_response": False, "timeout": self.retry.timeout}
        )
        if response.status_code != 200:
            raise PlatformAuthError(
                f"{self.shop.id}: Ideasoft refused the {grant_type} grant ({response.status_code} "
                f"{response.text[:200]}); check the client id/secret in the Airflow connection "
                f"{self.hook.http_conn_id!r}"
            )
        token = response.json()
        lifetime = float(token.get("expires_in") or 3600)
        self._access_token = token["access_token"]
        self._refresh_token = token.get("refresh_token")
        self._refresh_at = self.clock() + lifetime - min(300.0, lifetime * 0.1)
        self.token_grants.append(grant_type)
        log.info("%s: Ideasoft token obtained (%s), valid %.0fs", self.shop.id, grant_type, lifetime)

    def _ensure_token(self, *, force: bool = False) -> None:
        if self._access_token and not force and self.clock() < self._refresh_at:
            return
        if self._refresh_token:
            try:
                self._grant("refresh_token", refresh_token=self._refresh_token)
                return
            except PlatformAuthError:
                log.warning("%s: refresh token refused; requesting a new token", self.shop.id)
        self._grant("client_credentials")

    def prepare(self, request: requests.Request) -> requests.Request:
        self._ensure_token()
        request.headers = {**(request.headers or {}), "Authorization": f"Bearer {self._access_token}"}
        return request

    def on_unauthorised(self, response: requests.Response) -> bool:
        log.warning("%s: Ideasoft answered 401 (%s); refreshing the token", self.shop.id, response.text[:100])
        self._ensure_token(force=True)
        return True

    # -- listings ----------------------------------------------------------------------------------
    def fetch(self, entity: str, window: Window) -> Iterator[PolledRecord]:
        limit = min(self.page_size, MAX_LIMIT)
        params = {"limit": limit, "sort": "updatedAt", "endUpdatedAt": iso_utc(window.until)}
        if window.since is not None:
            params["startUpdatedAt"] = iso_utc(window.since)
        page = 1
        guard = PageGuard(self.shop.id, entity)
        while True:
            records = self.request(
                "GET", f"admin-api/{_RESOURCES[entity]}", params={**params, "page": page}
            ).json()
            converted = [polled_record(entity, payload) for payload in records]
            guard.check(converted)
            for record in converted:
                if record.updated_at is None or record.updated_at <= window.until:
                    yield record
            if len(records) < limit:
                return
            page += 1
