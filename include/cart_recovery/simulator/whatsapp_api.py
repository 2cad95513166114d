"""Fake WhatsApp Business Cloud API: sends, Meta's limits and errors, signed webhooks back.

Mounted under ``/whatsapp``, so the connection's host is ``<simulator>/whatsapp`` and a send is
``POST /whatsapp/<version>/<phone_number_id>/messages`` with ``Authorization: Bearer <token>``.
It speaks the Graph API's wire format: the body ``{"messaging_product": "whatsapp", "to", "type":
"template"|"text", "template": {"name", "language": {"code"}, "components": [{"type": "body",
"parameters": [{"type": "text", "text"}]}]}, "biz_opaque_callback_data"}``, the answer ``{"messaging_product",
"contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid..."}]}`` and Meta's error object
``{"error": {"message", "type", "code", "error_data": {"messaging_product", "details"}, "fbtrace_id"}}``
with the HTTP status Meta's error-code reference gives for each code.

What it enforces, each switchable through ``WhatsAppState.knobs`` or a registry method:

- approved templates: exactly the entries of ``dispatch/templates/whatsapp_templates.yaml`` (name
  and language; otherwise 132001) with their number of body parameters (otherwise 132000);
- throughput per business number (``messages_per_second``, 80 by default; 130429 above it);
- the pair rate: one message per ``pair_interval`` seconds (6) to the same person (131056);
- free-form ``text`` only within 24 hours of the person's last message (131047);
- numbers not on WhatsApp (131026) and numbers that stopped promotions (131050, MARKETING only).
  Meta often reports these two later, in a ``failed`` status callback: by default the fake answers
  them at once, so that a client's handling of each code can be exercised; ``fail_later`` makes it
  accept the message and report the error in its ``failed`` status callback instead.

Every accepted message is logged (``messages()``, ``GET /whatsapp/_log``). When a webhook URL is
set (``set_webhook``), each accepted message is followed by signed status callbacks (sent,
delivered, read) to it, and ``POST /whatsapp/_inbound`` plays a customer writing in.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

TEMPLATES_FILE = Path(__file__).resolve().parents[1] / "dispatch" / "templates" / "whatsapp_templates.yaml"
DEFAULT_API_VERSION = "v21.0"
SERVICE_WINDOW_SECONDS = 24 * 3600
MAX_CALLBACK_DATA = 512  # Meta's limit on biz_opaque_callback_data
STATUS_MODES = ("off", "delivered", "all")  # which status callbacks follow an accepted message
_VERSION = re.compile(r"v\d+\.\d+")
_PLACEHOLDER = re.compile(r"\{\{(\d+)\}\}")
_PHONE = re.compile(r"\+?\d{7,15}")

# Meta's codes the fake answers with: code -> (HTTP status, title, details). Statuses and titles as
# in Meta's WhatsApp Cloud API error-code reference (developers.facebook.com/documentation/
# business-messaging/whatsapp/support/error-codes); 131050 has no status there and is a 400 like
# the other per-recipient refusals.
ERRORS: dict[int, tuple[int, str, str]] = {
    2: (503, "Service temporarily unavailable", "Temporary due to downtime or due to being overloaded."),
    100: (400, "Invalid parameter", "The request included one or more unsupported or misspelled parameters."),
    130429: (
        400,
        "Rate limit hit",
        "Message failed to send because there were too many messages sent from this phone number "
        "in a short period of time",
    ),
    131000: (500, "Something went wrong", "Message failed to send due to an unknown error."),
    131008: (400, "Required parameter is missing", "The request is missing a required parameter."),
    131009: (400, "Parameter value is not valid", "One or more parameter values are invalid."),
    131026: (400, "Message Undeliverable", "Message Undeliverable."),
    131047: (
        400,
        "Re-engagement message",
        "Message failed to send because more than 24 hours have passed since the customer last "
        "replied to this number.",
    ),
    131050: (
        400,
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business",
        "Unable to deliver the message. This recipient has chosen to stop receiving marketing "
        "messages on WhatsApp from your business.",
    ),
    131051: (400, "Unsupported message type", "Unsupported message type."),
    131056: (
        400,
        "(Business Account, Consumer Account) pair rate limit hit",
        "Message failed to send because there were too many messages sent from this phone number "
        "to the same phone number in a short period of time.",
    ),
    132000: (
        400,
        "Number of parameters does not match the expected number of params",
        "The number of variable parameter values included in the request did not match the "
        "number of variable parameters defined in the template.",
    ),
    132001: (
        404,
        "Template name does not exist in the translation",
        "The template does not exist in the specified language or the template has not been approved.",
    ),
    132012: (
        400,
        "Parameter format does not match format in the created template",
        "Variable parameter values formatted incorrectly.",
    ),
}


@dataclass(frozen=True)
class ApprovedTemplate:
    name: str
    language: str
    category: str
    parameter_count: int


def load_templates(path: Path = TEMPLATES_FILE) -> dict[tuple[str, str], ApprovedTemplate]:
    """The template registry as the fake approves it: (name, language) -> template.

    The registry is checked as Meta checks a submission: each entry names its language and
    category, and its body's placeholders are exactly {{1}}..{{n}} for its n parameters.
    """
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not document:
        raise ValueError(f"{path}: expected a mapping of template name -> definition")
    approved = {}
    for name, entry in document.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: template {name!r} is not a mapping")
        missing = [key for key in ("language", "category", "parameters", "body") if key not in entry]
        if missing:
            raise ValueError(f"{path}: template {name!r} lacks {missing}")
        count = len(entry["parameters"])
        numbers = sorted({int(n) for n in _PLACEHOLDER.findall(entry["body"])})
        if numbers != list(range(1, count + 1)):
            raise ValueError(
                f"{path}: template {name!r} names {count} parameters but its body has placeholders {numbers}"
            )
        template = ApprovedTemplate(name, str(entry["language"]), str(entry["category"]).upper(), count)
        approved[(template.name, template.language)] = template
    return approved


def wa_id(number: str) -> str:
    """The WhatsApp id of a phone number: its digits (``+90 555 123 45 67`` -> ``905551234567``)."""
    return "".join(ch for ch in number if ch.isdigit())


@dataclass
class WhatsAppKnobs:
    """Limits and failure injection of the fake; tests change them while it runs."""

    messages_per_second: float = 80  # per business phone number; above it: 130429
    pair_interval: float = 6.0  # seconds between two messages to one person (131056); 0: off
    status_callbacks: str = "all"  # off | delivered (sent, delivered) | all (sent, delivered, read)
    status_delay: float = 0.05  # seconds before each status callback
    response_delay: float = 0.0  # seconds an accepted send waits before answering (client timeouts)
    fail_next: int = 0  # answer the next N sends with fail_status, before anything else is checked
    fail_status: int = 500  # 500 (code 131000), 503 (code 2) or another 5xx (a plain-text body)

    def check(self) -> None:
        """ValueError naming a knob set to something the fake cannot do."""
        if self.messages_per_second <= 0:
            raise ValueError(f"messages_per_second must be > 0, not {self.messages_per_second}")
        if self.status_callbacks not in STATUS_MODES:
            raise ValueError(f"status_callbacks must be one of {STATUS_MODES}, not {self.status_callbacks!r}")
        if min(self.pair_interval, self.status_delay, self.response_delay, self.fail_next) < 0:
            raise ValueError("pair_interval, status_delay, response_delay and fail_next must be >= 0")
        if not 500 <= self.fail_status <= 599:
            raise ValueError(f"fail_status must be a 5xx, not {self.fail_status}")


@dataclass(frozen=True)
class AcceptedMessage:
    """One message the fake accepted, as the tests and the demo read it back."""

    id: str
    phone_number_id: str
    to: str  # as the request gave it
    wa_id: str
    type: str  # template | text
    template: str | None
    language: str | None
    category: str  # MARKETING, UTILITY... of the template; SERVICE for free-form text
    parameters: tuple[str, ...]
    text: str | None
    callback_data: str | None
    accepted_at: float  # epoch seconds
    fails_with: int | None = None  # the error its ``failed`` status callback reports (fail_later)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "parameters": list(self.parameters)}


@dataclass(frozen=True)
class CallbackDelivery:
    """One webhook the fake posted: a status of an accepted message or an inbound message."""

    kind: str  # status | message
    message_id: str
    status: str | None  # sent | delivered | read (kind status)
    http_status: int | None  # the receiver's answer; None when it could not be reached


@dataclass
class _Bucket:
    tokens: float
    at: float


class WhatsAppError(Exception):
    """A refusal answered in Meta's error shape."""

    def __init__(self, code: int, details: str | None = None) -> None:
        status, title, default_details = ERRORS[code]
        super().__init__(f"(#{code}) {title}")
        self.code = code
        self.status = status
        self.title = title
        self.details = details or default_details

    def response(self) -> JSONResponse:
        return _graph_error(
            self.status,
            {
                "message": f"(#{self.code}) {self.title}",
                "type": "OAuthException",
                "code": self.code,
                "error_data": {"messaging_product": "whatsapp", "details": self.details},
            },
        )


def _graph_error(status: int, error: dict[str, Any]) -> JSONResponse:
    error["fbtrace_id"] = "A" + secrets.token_urlsafe(16)
    headers = {"WWW-Authenticate": "OAuth"} if status == 401 else None
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _new_wamid() -> str:
    # Real ids are base64 of an internal key; uniqueness is what clients rely on.
    return "wamid." + secrets.token_urlsafe(36)


def meta_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WhatsAppState:
    """The fake's business account: its number, token, secrets, limits, registries and logs.

    Thread-safe: the server's event loop and the test thread both use it.
    """

    def __init__(
        self,
        *,
        access_token: str = "EAAsimulatedWhatsAppAccessToken0001",
        phone_number_id: str = "106540352242922",
        display_phone_number: str = "908501234567",
        business_account_id: str = "102290129340398",
        app_secret: str = "simulated-meta-app-secret",
        verify_token: str = "simulated-verify-token",
        api_version: str = DEFAULT_API_VERSION,
        templates: dict[tuple[str, str], ApprovedTemplate] | None = None,
        knobs: WhatsAppKnobs | None = None,
    ) -> None:
        self.access_token = access_token
        self.phone_number_id = phone_number_id
        self.display_phone_number = display_phone_number
        self.business_account_id = business_account_id
        self.app_secret = app_secret
        self.verify_token = verify_token
        self.api_version = api_version
        self.templates = templates if templates is not None else load_templates()
        self.knobs = knobs or WhatsAppKnobs()
        self.webhook_url: str | None = None
        self._lock = threading.Lock()
        self._messages: list[AcceptedMessage] = []
        self._deliveries: list[CallbackDelivery] = []
        self._not_on_whatsapp: set[str] = set()
        self._stopped_marketing: set[str] = set()
        self._fail_later: dict[str, int] = {}  # wa_id -> the error its failed status carries
        self._last_inbound: dict[str, float] = {}  # wa_id -> epoch seconds
        self._last_sent: dict[tuple[str, str], float] = {}  # (phone number id, wa_id) -> monotonic
        self._buckets: dict[str, _Bucket] = {}
        self._conversations: dict[tuple[str, str], str] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- configuration -----------------------------------------------------------------------

    def connection(self, base_url: str) -> dict[str, Any]:
        """The ``whatsapp_default`` Airflow connection (JSON form) for this fake at ``base_url``."""
        return {
            "conn_type": "http",
            "host": base_url,
            "password": self.access_token,
            "extra": {
                "phone_number_id": self.phone_number_id,
                "api_version": self.api_version,
                "messages_per_second": self.knobs.messages_per_second,
                "app_secret": self.app_secret,
                "verify_token": self.verify_token,
            },
        }

    def set_webhook(self, url: str | None, app_secret: str | None = None) -> None:
        """Where status callbacks and inbound messages go (the webhook service's
        ``/webhooks/whatsapp``), signed with ``app_secret`` (default: the connection's)."""
        with self._lock:
            self.webhook_url = url
            if app_secret is not None:
                self.app_secret = app_secret

    def not_on_whatsapp(self, *numbers: str) -> None:
        """These numbers have no WhatsApp account: sends to them answer 131026."""
        with self._lock:
            self._not_on_whatsapp.update(wa_id(n) for n in numbers)

    def fail_later(self, code: int, *numbers: str) -> None:
        """Messages to these numbers are accepted (a ``wamid.`` id), then reported ``sent`` and
        ``failed`` with error ``code`` in the status callbacks, as Meta reports an undeliverable
        message (131026) or a stop (131050) it found out about after the answer."""
        if code not in ERRORS:
            raise ValueError(f"fail_later needs one of the fake's error codes, not {code}")
        with self._lock:
            self._fail_later.update({wa_id(n): code for n in numbers})

    def stop_promotions(self, *numbers: str) -> None:
        """These people tapped "Stop promotions": MARKETING templates to them answer 131050."""
        with self._lock:
            self._stopped_marketing.update(wa_id(n) for n in numbers)

    def open_window(self, number: str, at: float | None = None) -> None:
        """Record a message from ``number`` at ``at`` (epoch seconds, default now): free-form text
        may be sent to it for 24 hours after."""
        with self._lock:
            self._last_inbound[wa_id(number)] = time.time() if at is None else at

    def inject_failures(self, count: int, status: int = 500) -> None:
        """Answer the next ``count`` sends with HTTP ``status`` (a 5xx)."""
        if count < 0 or not 500 <= status <= 599:
            raise ValueError("inject_failures needs a count >= 0 and a 5xx status")
        with self._lock:
            self.knobs.fail_next = count
            self.knobs.fail_status = status

    def reset(self) -> None:
        """Forget messages, callbacks, registries and rate state; knobs back to their defaults."""
        with self._lock:
            vars(self.knobs).update(vars(WhatsAppKnobs()))  # in place: callers hold the object
            self.webhook_url = None
            for collection in (
                self._messages,
                self._deliveries,
                self._not_on_whatsapp,
                self._stopped_marketing,
                self._fail_later,
                self._last_inbound,
                self._last_sent,
                self._buckets,
                self._conversations,
            ):
                collection.clear()

    # -- what happened -----------------------------------------------------------------------

    def messages(self, to: str | None = None) -> list[AcceptedMessage]:
        """Accepted messages, oldest first (only those to ``to`` when given)."""
        with self._lock:
            chosen = list(self._messages)
        return chosen if to is None else [m for m in chosen if m.wa_id == wa_id(to)]

    def deliveries(self) -> list[CallbackDelivery]:
        """Webhooks posted so far (status callbacks and inbound messages), in posting order."""
        with self._lock:
            return list(self._deliveries)

    # -- the send path -----------------------------------------------------------------------

    def take_injected_failure(self) -> int | None:
        """The 5xx status the next send must answer with (``inject_failures``), if any."""
        with self._lock:
            if self.knobs.fail_next <= 0:
                return None
            self.knobs.fail_next -= 1
            return self.knobs.fail_status

    def _take_throughput(self, phone_number_id: str) -> bool:
        """A token bucket per business number: ``messages_per_second`` tokens (at least one),
        refilled at that rate, one per well-formed send request (accepted or refused after it)."""
        rate = self.knobs.messages_per_second
        capacity = max(rate, 1.0)
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(phone_number_id, _Bucket(tokens=capacity, at=now))
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.at) * rate)
            bucket.at = now
            if bucket.tokens < 1:
                return False
            bucket.tokens -= 1
            return True

    def accept(self, phone_number_id: str, body: Any) -> AcceptedMessage:
        """Check one send request as Cloud API does and log it; WhatsAppError when refused."""
        if not isinstance(body, dict):
            raise WhatsAppError(100, "The request body must be a JSON object.")
        if body.get("messaging_product") != "whatsapp":
            raise WhatsAppError(100, "messaging_product must be 'whatsapp'.")
        to = body.get("to")
        if not isinstance(to, str) or not to:
            raise WhatsAppError(131008, "The parameter to is required.")
        if not _PHONE.fullmatch(to.replace(" ", "").replace("-", "")):
            raise WhatsAppError(131009, f"The phone number {to!r} is not a valid phone number.")
        callback_data = body.get("biz_opaque_callback_data")
        if callback_data is not None and (
            not isinstance(callback_data, str) or len(callback_data) > MAX_CALLBACK_DATA
        ):
            raise WhatsAppError(
                131009, f"biz_opaque_callback_data must be a string of at most {MAX_CALLBACK_DATA} chars."
            )
        kind = body.get("type", "text")
        if kind == "template":
            template, parameters = self._template(body.get("template"))
            category, text = template.category, None
            name, language = template.name, template.language
        elif kind == "text":
            text_object = body.get("text")
            text = text_object.get("body") if isinstance(text_object, dict) else None
            if not isinstance(text, str) or not text:
                raise WhatsAppError(131008, "The parameter text['body'] is required.")
            category, parameters, name, language = "SERVICE", (), None, None
        else:
            raise WhatsAppError(131051, f"Unsupported message type {kind!r}.")

        recipient = wa_id(to)
        if not self._take_throughput(phone_number_id):
            raise WhatsAppError(130429)
        now, clock = time.time(), time.monotonic()
        with self._lock:
            if recipient in self._not_on_whatsapp:
                raise WhatsAppError(131026)
            if category == "MARKETING" and recipient in self._stopped_marketing:
                raise WhatsAppError(131050)
            last_inbound = self._last_inbound.get(recipient)
            if kind == "text" and (last_inbound is None or now - last_inbound > SERVICE_WINDOW_SECONDS):
                raise WhatsAppError(131047)
            pair = (phone_number_id, recipient)
            last = self._last_sent.get(pair)
            interval = self.knobs.pair_interval
            if interval > 0 and last is not None and clock - last < interval:
                raise WhatsAppError(131056)
            self._last_sent[pair] = clock
            message = AcceptedMessage(
                id=_new_wamid(),
                phone_number_id=phone_number_id,
                to=to,
                wa_id=recipient,
                type=kind,
                template=name,
                language=language,
                category=category,
                parameters=parameters,
                text=text,
                callback_data=callback_data,
                accepted_at=now,
                fails_with=self._fail_later.get(recipient),
            )
            self._messages.append(message)
        return message

    def _template(self, template: Any) -> tuple[ApprovedTemplate, tuple[str, ...]]:
        if not isinstance(template, dict) or not isinstance(template.get("name"), str):
            raise WhatsAppError(131008, "The parameter template['name'] is required.")
        language = template.get("language")
        code = language.get("code") if isinstance(language, dict) else None
        if not isinstance(code, str) or not code:
            raise WhatsAppError(131008, "The parameter template['language']['code'] is required.")
        approved = self.templates.get((template["name"], code))
        if approved is None:
            raise WhatsAppError(132001, f"template name ({template['name']}) does not exist in {code}")
        parameters: list[str] = []
        components = template.get("components") or []
        if not isinstance(components, list):
            raise WhatsAppError(100, "template['components'] must be a list.")
        for component in components:
            if not isinstance(component, dict) or component.get("type") != "body":
                continue  # header and button components: the registry's templates have none
            for parameter in component.get("parameters") or []:
                if (
                    not isinstance(parameter, dict)
                    or parameter.get("type") != "text"
                    or not isinstance(parameter.get("text"), str)
                    or not parameter["text"].strip()
                ):
                    raise WhatsAppError(132012, f"Body parameter {len(parameters) + 1} is not a text value.")
                parameters.append(parameter["text"])
        if len(parameters) != approved.parameter_count:
            raise WhatsAppError(
                132000,
                f"body: number of localizable_params ({len(parameters)}) does not match the "
                f"expected number of params ({approved.parameter_count})",
            )
        return approved, tuple(parameters)

    # -- webhooks back -----------------------------------------------------------------------

    def _envelope(self, value: dict[str, Any]) -> bytes:
        document = {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "id": self.business_account_id,
                    "changes": [
                        {
                            "value": {
                                "messaging_product": "whatsapp",
                                "metadata": {
                                    "display_phone_number": self.display_phone_number,
                                    "phone_number_id": self.phone_number_id,
                                },
                                **value,
                            },
                            "field": "messages",
                        }
                    ],
                }
            ],
        }
        return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()

    def status_body(self, message: AcceptedMessage, status: str, at: float) -> bytes:
        """The status webhook of ``message``: Meta's envelope with one ``statuses[]`` item."""
        item: dict[str, Any] = {
            "id": message.id,
            "status": status,
            "timestamp": str(int(at)),
            "recipient_id": message.wa_id,
        }
        if message.callback_data is not None:
            item["biz_opaque_callback_data"] = message.callback_data
        if status == "failed":
            code = message.fails_with or 131000
            _, title, details = ERRORS[code]
            item["errors"] = [
                {
                    "code": code,
                    "title": title,
                    "message": title,
                    "error_data": {"details": details},
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                }
            ]
        if status in ("sent", "delivered"):  # read statuses carry neither object
            category = message.category.lower()
            with self._lock:
                conversation_id = self._conversations.setdefault(
                    (message.wa_id, category), secrets.token_hex(16)
                )
            conversation: dict[str, Any] = {"id": conversation_id, "origin": {"type": category}}
            if status == "sent":
                conversation["expiration_timestamp"] = str(int(message.accepted_at) + SERVICE_WINDOW_SECONDS)
            item["conversation"] = conversation
            free = category == "service"
            item["pricing"] = {
                "billable": not free,
                "pricing_model": "PMP",
                "type": "free_customer_service" if free else "regular",
                "category": category,
            }
        return self._envelope({"statuses": [item]})

    def inbound_body(self, sender: str, text: str, message_id: str, at: float, name: str) -> bytes:
        """The inbound-message webhook: a customer's text, as Meta posts it."""
        return self._envelope(
            {
                "contacts": [{"profile": {"name": name}, "wa_id": wa_id(sender)}],
                "messages": [
                    {
                        "from": wa_id(sender),
                        "id": message_id,
                        "timestamp": str(int(at)),
                        "type": "text",
                        "text": {"body": text},
                    }
                ],
            }
        )

    async def post_webhook(self, client: httpx.AsyncClient, body: bytes, attempts: int = 3) -> int | None:
        """POST a signed webhook to ``webhook_url``; a few retries, as Meta retries; the last status."""
        url, secret = self.webhook_url, self.app_secret
        if url is None:
            return None
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": meta_signature(secret, body),
            "User-Agent": "facebookexternalua",
        }
        status: int | None = None
        for attempt in range(attempts):
            try:
                status = (await client.post(url, content=body, headers=headers)).status_code
            except httpx.HTTPError:
                status = None
            if (status is not None and 200 <= status < 300) or attempt == attempts - 1:
                break
            await asyncio.sleep(0.1 * 2**attempt)
        return status

    def record(self, delivery: CallbackDelivery) -> None:
        with self._lock:
            self._deliveries.append(delivery)

    def report_statuses(self, message: AcceptedMessage) -> None:
        """Schedule the status callbacks of an accepted message on the running loop."""
        mode = self.knobs.status_callbacks
        if self.webhook_url is None or mode == "off":
            return
        if message.fails_with is not None:
            statuses: tuple[str, ...] = ("sent", "failed")
        else:
            statuses = ("sent", "delivered") if mode == "delivered" else ("sent", "delivered", "read")
        task = asyncio.get_running_loop().create_task(self._post_statuses(message, statuses))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post_statuses(self, message: AcceptedMessage, statuses: Iterable[str]) -> None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            for status in statuses:
                await asyncio.sleep(self.knobs.status_delay)
                body = self.status_body(message, status, time.time())
                answer = await self.post_webhook(client, body)
                self.record(CallbackDelivery("status", message.id, status, answer))


def router(state: WhatsAppState) -> APIRouter:
    api = APIRouter(tags=["whatsapp"])

    @api.post("/{version}/{phone_number_id}/messages")
    async def send_message(version: str, phone_number_id: str, request: Request) -> Response:
        if request.headers.get("Authorization", "") != f"Bearer {state.access_token}":
            return _graph_error(
                401,
                {
                    "message": "Invalid OAuth access token - Cannot parse access token",
                    "type": "OAuthException",
                    "code": 190,
                },
            )
        if not _VERSION.fullmatch(version) or phone_number_id != state.phone_number_id:
            return _graph_error(
                400,
                {
                    "message": f"Unsupported post request. Object with ID '{phone_number_id}' does not "
                    "exist, cannot be loaded due to missing permissions, or does not support this "
                    "operation. Please read the Graph API documentation at "
                    "https://developers.facebook.com/docs/graph-api",
                    "type": "GraphMethodException",
                    "code": 100,
                    "error_subcode": 33,
                },
            )
        try:
            state.knobs.check()
        except ValueError as exc:
            return PlainTextResponse(f"the WhatsApp simulator is misconfigured: {exc}", status_code=500)
        failure = state.take_injected_failure()
        if failure == 500:
            return WhatsAppError(131000).response()
        if failure == 503:
            return WhatsAppError(2).response()
        if failure is not None:
            return PlainTextResponse("upstream unavailable", status_code=failure)
        try:
            body = json.loads(await request.body())
        except ValueError:
            return WhatsAppError(100, "The request body is not valid JSON.").response()
        try:
            message = state.accept(phone_number_id, body)
        except WhatsAppError as refusal:
            return refusal.response()
        state.report_statuses(message)
        if state.knobs.response_delay > 0:
            await asyncio.sleep(state.knobs.response_delay)
        sent: dict[str, Any] = {"id": message.id}
        if message.type == "template":
            sent["message_status"] = "accepted"
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": message.to, "wa_id": message.wa_id}],
                "messages": [sent],
            }
        )

    @api.get("/_log")
    def log(to: str | None = None) -> dict[str, Any]:
        """Accepted messages (oldest first) and the webhooks posted back, for tests and the demo."""
        return {
            "messages": [m.as_json() for m in state.messages(to)],
            "callbacks": [asdict(d) for d in state.deliveries()],
        }

    @api.post("/_inbound")
    async def inbound(request: Request) -> JSONResponse:
        """A customer writes in: ``{"from": "+9055...", "text": "...", "name": "Ayşe"}``. Opens the 24 h
        window and posts the signed inbound webhook to the configured URL."""
        try:
            payload = json.loads(await request.body())
        except ValueError:
            payload = None
        if not (
            isinstance(payload, dict)
            and isinstance(payload.get("from"), str)
            and wa_id(payload["from"])
            and isinstance(payload.get("text"), str)
            and payload["text"]
        ):
            return JSONResponse(
                {"detail": 'expected {"from": "<phone>", "text": "<message>"}'}, status_code=422
            )
        at = time.time()
        state.open_window(payload["from"], at)
        message_id = _new_wamid()
        body = state.inbound_body(payload["from"], payload["text"], message_id, at, payload.get("name") or "")
        async with httpx.AsyncClient(timeout=10.0) as client:
            answer = await state.post_webhook(client, body)
        if state.webhook_url is not None:
            state.record(CallbackDelivery("message", message_id, None, answer))
        return JSONResponse({"id": message_id, "webhook_url": state.webhook_url, "webhook_status": answer})

    return api


__all__ = [
    "ERRORS",
    "AcceptedMessage",
    "ApprovedTemplate",
    "CallbackDelivery",
    "WhatsAppKnobs",
    "WhatsAppState",
    "load_templates",
    "router",
    "wa_id",
]
