"""The offline backend's answer to one customer message: intent, language, reply text, actions.

:func:`reply` is pure: it reads the shop (with its ``policy:`` from the shops file) and, when
given, the cart (:class:`Cart`, see :func:`cart_recovery.assistant.carts.load_cart`), and sends
nothing and stores nothing. The text comes from ``templates/replies.yaml`` (Jinja2) filled with the
shop's own values only; what the policy does not give, the reply does not say: a shop without a
policy, or a question the data cannot answer, is handed to the shop's team.

``actions`` say what the caller must do with the reply (the webhook-side path wires them; the
command line only prints them):

- ``pause_episode``: the customer is talking, so the cart's recovery episode waits (with a cart);
- ``revoke_consent`` and ``end_episode``: a STOP (``consent.revoke``, source ``whatsapp_stop``);
- ``handoff``: a row in the support queue with the conversation (human, a declined card, a
  question the data cannot answer);
- ``offer_handoff``: the reply offers a person (other);
- ``check_coupon``: a discount request, to be answered within the segment policy (not wired yet).
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, StrictUndefined

from cart_recovery.assistant.intents import INTENTS, detect
from cart_recovery.dispatch.consent import fold
from cart_recovery.dispatch.templates import format_money
from cart_recovery.shop_policy import ShopPolicy, SizeChart, SizeRow
from cart_recovery.shops import Shop

TEMPLATES_FILE = Path(__file__).parent / "templates" / "replies.yaml"
BACKEND = "offline"

_DAYS = {
    "tr": {"mon-fri": "hafta içi", "mon-sat": "Pazartesi-Cumartesi", "mon-sun": "her gün"},
    "en": {"mon-fri": "Monday to Friday", "mon-sat": "Monday to Saturday", "mon-sun": "every day"},
}
_METHODS = {
    "tr": {
        "credit_card": "kredi kartı",
        "debit_card": "banka kartı",
        "bank_transfer": "havale/EFT",
        "cash_on_delivery": "kapıda ödeme",
        "paypal": "PayPal",
        "apple_pay": "Apple Pay",
        "google_pay": "Google Pay",
        "papara": "Papara",
        "klarna": "Klarna",
    },
    "en": {
        "credit_card": "credit card",
        "debit_card": "debit card",
        "bank_transfer": "bank transfer",
        "cash_on_delivery": "cash on delivery",
        "paypal": "PayPal",
        "apple_pay": "Apple Pay",
        "google_pay": "Google Pay",
        "papara": "Papara",
        "klarna": "Klarna",
    },
}
_MEASURES = {
    "tr": {"chest": "göğüs", "waist": "bel", "hip": "kalça", "length": "boy"},
    "en": {"chest": "chest", "waist": "waist", "hip": "hip", "length": "length"},
}
# A card that did not go through: the reply hands off as well as listing the methods.
_DECLINED = re.compile(
    r"reddedil|declin|hata|error|fail|olmadi|olmuyo|gecmiyor|kabul etmiyor|cekildi|charged|"
    r"money (?:was )?taken|blocked|takildi|acilmiyor|yenileniyor|doesnt do"
)


@dataclass(frozen=True)
class CartLine:
    title: str
    variant_title: str | None
    quantity: int
    price: Decimal
    product_type: str | None = None


@dataclass(frozen=True)
class Cart:
    cart_key: str
    currency: str
    value: Decimal
    lines: tuple[CartLine, ...]
    cart_url: str | None = None
    language: str | None = None


@dataclass
class AssistantReply:
    intent: str
    language: str
    confidence: float
    reply: str
    actions: list[str]
    backend: str = BACKEND
    latency_ms: float = 0.0
    facts: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "intent": self.intent,
            "language": self.language,
            "confidence": self.confidence,
            "reply": self.reply,
            "actions": self.actions,
            "backend": self.backend,
            "latency_ms": self.latency_ms,
            "facts": self.facts,
        }


@functools.cache
def _templates() -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(TEMPLATES_FILE.read_text(encoding="utf-8"))
    environment = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)
    missing = [f"{i}.{lang}" for i in INTENTS for lang in ("tr", "en") if lang not in document.get(i, {})]
    if missing:
        raise ValueError(f"{TEMPLATES_FILE} lacks the templates {', '.join(missing)}")
    return {
        intent: {lang: environment.from_string(text) for lang, text in by_language.items()}
        for intent, by_language in document.items()
    }


def _render(intent: str, language: str, values: dict[str, Any]) -> str:
    text = _templates()[intent][language].render(**values)
    return re.sub(r"[ \t]*\n[ \t]*", " ", re.sub(r"[ \t]{2,}", " ", text)).strip()


# -- size advice ---------------------------------------------------------------------------------

_HEIGHT_M = re.compile(r"\b1 ?[.,] ?([4-9]\d)\b")
_HEIGHT_CM = re.compile(
    r"\b(1[4-9]\d|2[01]\d) ?(?:cm\b|boy)|(?:boy(?:um)?|height|tall) ?:? ?(1[4-9]\d|2[01]\d)\b"
)
_HEIGHT_FT = re.compile(r"\b([4-6]) ?(?:'|ft|feet|foot) ?(\d{1,2})?")
_WEIGHT_KG = re.compile(
    r"\b(\d{2,3}) ?(?:kg|kilo|kiloyum|kilom)\b|(?:kilo(?:m|yum)?|weight) ?:? ?(\d{2,3})\b"
)
_WEIGHT_LB = re.compile(r"\b(\d{2,3}) ?(?:lbs?|pounds)\b")
_CHEST = re.compile(r"(?:gogus(?: cevrem)?|chest(?: is)?) ?:? ?(\d{2,3})")
_USUAL = re.compile(
    r"(?:normalde|genelde|genellikle|usually|normally|always|i wear|i am|im|i'm)\s+(?:wear\s+)?(?:a\s+)?"
    r"(xxl|xl|xs|s|m|l|small|medium|large)\b",
)
_SIZE_WORDS = {"small": "S", "medium": "M", "large": "L"}


def _measurements(text: str) -> dict[str, float]:
    """Height (cm), weight (kg), chest (cm) and usual size a message states, where it does."""
    lowered = text.lower()
    found: dict[str, Any] = {}
    if match := _HEIGHT_M.search(lowered):
        found["height"] = 100 + float(match.group(1))
    elif match := _HEIGHT_CM.search(fold(text)):
        found["height"] = float(match.group(1) or match.group(2))
    elif match := _HEIGHT_FT.search(lowered):
        found["height"] = round(float(match.group(1)) * 30.48 + float(match.group(2) or 0) * 2.54)
    folded = fold(text)
    # "boyum 165 kilom 58": "165 kilom" reads as a weight too, so the height's number is skipped.
    weights = [float(m.group(1) or m.group(2)) for m in _WEIGHT_KG.finditer(folded)]
    weights = [w for w in weights if w != found.get("height")]
    if weights:
        found["weight"] = weights[0]
    elif match := _WEIGHT_LB.search(folded):
        found["weight"] = round(float(match.group(1)) * 0.4536, 1)
    if match := _CHEST.search(folded):
        found["chest"] = float(match.group(1))
    if match := _USUAL.search(lowered):
        word = match.group(1)
        found["usual"] = _SIZE_WORDS.get(word, word.upper())
    return found


def _in(value: float | None, low: float | None, high: float | None) -> bool:
    return value is not None and low is not None and high is not None and low <= value <= high


def size_advice(chart: SizeChart, text: str) -> dict[str, str] | None:
    """A size from the chart for what the message states, or None when the chart cannot tell.

    The usual size wins when the chart has it; then height and weight both within a row's
    ranges (weight alone when only it fits one row); then the smallest size whose chest is at
    least the stated chest.
    """
    stated = _measurements(text)
    sizes = {row.size.upper(): row for row in chart.rows}
    if stated.get("usual") in sizes:
        return {"size": sizes[stated["usual"]].size, "basis": "usual"}
    height, weight = stated.get("height"), stated.get("weight")
    rows: list[SizeRow] = list(chart.rows)
    both = [
        r for r in rows if _in(height, r.height_min, r.height_max) and _in(weight, r.weight_min, r.weight_max)
    ]
    by_weight = [r for r in rows if _in(weight, r.weight_min, r.weight_max)]
    by_height = [r for r in rows if _in(height, r.height_min, r.height_max)]
    for candidates in (both, by_weight, by_height if weight is None else []):
        if candidates:
            # Between two sizes, the larger: a garment a little loose can be worn, a tight one not.
            return {"size": candidates[-1].size, "basis": "measurements"}
    if (chest := stated.get("chest")) is not None:
        fitting = [r for r in rows if r.chest is not None and r.chest >= chest]
        if fitting:
            return {"size": fitting[0].size, "basis": "measurements"}
    return None


def _chart_for(policy: ShopPolicy, cart: Cart | None) -> tuple[SizeChart | None, str | None]:
    """The size chart of the cart's first product with one, else the shop's only chart."""
    for line in cart.lines if cart else ():
        if line.product_type and line.product_type in policy.size_charts:
            return policy.size_charts[line.product_type], line.title
    if len(policy.size_charts) == 1:
        product = next((line.title for line in cart.lines if line.variant_title), None) if cart else None
        return next(iter(policy.size_charts.values())), product
    return None, None


def _chart_values(chart: SizeChart, language: str) -> dict[str, Any]:
    rows = []
    for row in chart.rows:
        measures = [
            f"{_MEASURES[language][name]} {value:g}"
            for name in ("chest", "waist", "hip", "length")
            if (value := getattr(row, name)) is not None
        ]
        rows.append({"size": row.size, "measures": ", ".join(measures)})
    return {"unit": chart.unit, "rows": rows}


# -- the reply -----------------------------------------------------------------------------------


def _support_hours(policy: ShopPolicy, language: str) -> str:
    support = policy.support
    return f"{_DAYS[language][support.days]} {support.opens}-{support.closes}"


def reply(shop: Shop, text: str, cart: Cart | None = None) -> AssistantReply:
    """The offline backend's reply to ``text`` for ``shop`` (and ``cart``); sends nothing."""
    started = time.perf_counter()
    default_language = (cart.language if cart and cart.language in ("tr", "en") else None) or (
        shop.language if shop.language in ("tr", "en") else "en"
    )
    detection = detect(text, default_language)
    intent, language = detection.intent, detection.language
    actions: list[str] = []
    facts: dict[str, Any] = {}
    policy = shop.policy
    currency = cart.currency if cart else shop.currency

    def money(amount: Decimal | None) -> str | None:
        return None if amount is None else format_money(Decimal(amount), currency, language)

    if intent == "stop":
        values: dict[str, Any] = {"shop": shop.display_name}
        actions += ["revoke_consent", "end_episode"]
    elif policy is None:
        # Nothing to answer from: hand off rather than invent.
        return _finish(
            AssistantReply(
                intent=intent,
                language=language,
                confidence=detection.confidence,
                reply=(
                    f"{shop.display_name}: sorunuzu ekibimize iletiyorum, size buradan dönecekler."
                    if language == "tr"
                    else f"{shop.display_name}: I'm passing your question to our team; they'll reply here."
                ),
                actions=[*(["pause_episode"] if cart else []), "handoff"],
                facts={"policy": None},
            ),
            started,
        )
    else:
        shipping = policy.shipping
        to_free = None
        if cart and shipping.free_over is not None and cart.value < shipping.free_over:
            to_free = shipping.free_over - cart.value
        values = {
            "shop": shop.display_name,
            "support_hours": _support_hours(policy, language),
            "free_over": money(shipping.free_over),
            "to_free_shipping": money(to_free),
            "cart_value": money(cart.value) if cart else None,
            "return_days": policy.returns.days,
            "exchanges": policy.returns.exchanges,
        }
        if to_free is not None:
            facts["to_free_shipping"] = str(to_free)
        if intent == "size_fit":
            chart, product = _chart_for(policy, cart)
            advice = size_advice(chart, text) if chart else None
            values.update(
                chart=_chart_values(chart, language) if chart else None, product=product, advice=advice
            )
            facts["size_advice"] = advice["size"] if advice else None
            if chart is None:
                actions.append("handoff")
        elif intent == "shipping":
            values.update(
                carrier=shipping.carrier,
                cost=money(shipping.cost),
                days_min=shipping.days_min,
                days_max=shipping.days_max,
                cutoff=shipping.dispatch_cutoff,
                international=shipping.international,
            )
        elif intent == "returns_trust":
            values.update(
                free_returns=policy.returns.free,
                refund_days=policy.returns.refund_days,
                secure_3d=policy.payment.secure_3d,
                company=policy.company.model_dump() if policy.company else None,
                reviews_url=policy.company.reviews_url if policy.company else None,
            )
        elif intent == "discount":
            actions.append("check_coupon")
        elif intent == "account":
            values.update(guest_checkout=policy.guest_checkout, cart_url=cart.cart_url if cart else None)
        elif intent == "payment_problem":
            declined = bool(_DECLINED.search(fold(text)))
            values.update(
                methods=[_METHODS[language][m] for m in policy.payment.methods],
                installments_max=policy.payment.installments_max,
                installments_min=money(policy.payment.installments_min_total),
                declined=declined,
            )
            if declined:
                actions.append("handoff")
        elif intent == "product_question":
            lines = [
                {"title": line.title, "variant": line.variant_title, "price": money(line.price)}
                for line in (cart.lines if cart else ())
            ]
            values.update(lines=lines)
            actions.append("handoff")
        elif intent == "human":
            values.update(phone=policy.support.phone, email=policy.support.email)
            actions.append("handoff")
        elif intent == "other":
            actions.append("offer_handoff")
    if cart and intent != "stop":
        actions.insert(0, "pause_episode")
    return _finish(
        AssistantReply(
            intent=intent,
            language=language,
            confidence=detection.confidence,
            reply=_render(intent, language, values),
            actions=actions,
            facts=facts,
        ),
        started,
    )


def _finish(result: AssistantReply, started: float) -> AssistantReply:
    result.latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return result
