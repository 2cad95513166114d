"""The recovery messages: WhatsApp templates from the registry, emails from Jinja2 files.

Both channels read the same values from a ``MessageContext``, formatted for the customer: money
and percentages in their language's conventions (CLDR through Babel: ``₺1.234,50`` and ``%10`` in
Turkish, ``£1,234.50`` and ``10%`` in English), the coupon's expiry in the customer's time zone
with month names in their language. A message must be personal and specific, so anything that
would make it generic or wrong is an error here rather than a vague message later: an unknown
template, a language mismatch, no product, a coupon template without a coupon (or a coupon the
template would not show), a template promising free shipping the coupon does not give, a naive
expiry time, a link that is not http(s).

When the first name is unknown, the WhatsApp parameter ``{{1}}`` still needs a value (Meta
rejects empty parameters) and the body must still read naturally after "Hi ..." and "Last
chance, ...": it is "friend" in English and "sevgili müşterimiz" ("dear customer") in Turkish.
Emails need no placeholder word: their greeting is simply "Hi there," / "Merhaba,".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from babel import Locale
from babel.dates import format_datetime
from babel.numbers import format_currency, format_percent, get_currency_symbol
from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateNotFound, select_autoescape
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cart_recovery.dispatch.message import MessageContext

TEMPLATES_DIR = Path(__file__).parent / "templates"
WHATSAPP_TEMPLATES_FILE = TEMPLATES_DIR / "whatsapp_templates.yaml"
EMAIL_TEMPLATES_DIR = TEMPLATES_DIR / "email"

LANGUAGES = ("tr", "en")

# The values a template may take, by the names the registry's ``parameters`` use.
Parameter = Literal[
    "first_name", "product", "cart_value", "coupon_pct", "coupon_code", "coupon_expires", "cart_link"
]
COUPON_PARAMETERS = frozenset({"coupon_pct", "coupon_code", "coupon_expires"})

# Templates whose copy promises free shipping: their coupon must give it.
FREE_SHIPPING_TEMPLATES = frozenset({"cart_reminder_last_chance_en", "cart_reminder_last_chance_tr"})

# The {{1}} of a WhatsApp body when the first name is unknown (see the module docstring).
UNKNOWN_NAME = {"en": "friend", "tr": "sevgili müşterimiz"}

# Strings that reach us as a "name" when an upstream step stringified a missing value.
_MISSING_NAMES = frozenset({"None", "none", "null", "NULL", "nan", "NaN"})

# Meta refuses a parameter with a newline or tab or more than four spaces in a row; a body is at
# most 1024 characters. Long product titles are cut so that the message stays readable.
WHATSAPP_BODY_LIMIT = 1024
PRODUCT_TITLE_LIMIT = 80

_PLACEHOLDER = re.compile(r"\{\{(\d+)\}\}")
_WHITESPACE = re.compile(r"\s")  # what str.isspace() calls white space


class TemplateError(ValueError):
    """A template or a context that cannot make a correct, personal message."""


# --- the WhatsApp registry --------------------------------------------------------------------


class WhatsAppTemplate(BaseModel):
    """One entry of whatsapp_templates.yaml, as it is submitted to Meta."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]{1,512}$")  # Meta: lower case, digits, underscores
    language: Literal["tr", "en"]
    category: Literal["MARKETING", "UTILITY", "AUTHENTICATION"]
    parameters: list[Parameter] = Field(min_length=1)
    body: str = Field(min_length=1, max_length=WHATSAPP_BODY_LIMIT)

    @field_validator("parameters")
    @classmethod
    def _unique(cls, parameters: list[str]) -> list[str]:
        duplicates = sorted({p for p in parameters if parameters.count(p) > 1})
        if duplicates:
            raise ValueError(f"parameters named twice: {', '.join(duplicates)}")
        return parameters

    @model_validator(mode="after")
    def _consistent(self) -> WhatsAppTemplate:
        found = sorted({int(n) for n in _PLACEHOLDER.findall(self.body)})
        expected = list(range(1, len(self.parameters) + 1))
        if found != expected:
            raise ValueError(
                f"the body's placeholders are {found} but its {len(self.parameters)} parameters "
                f"need exactly {{{{1}}}}..{{{{{len(self.parameters)}}}}}"
            )
        if not self.name.endswith(f"_{self.language}"):
            raise ValueError(f"the name should end with _{self.language}, its language")
        return self

    @property
    def needs_coupon(self) -> bool:
        return bool(COUPON_PARAMETERS & set(self.parameters))

    def fill(self, values: list[str]) -> str:
        return _PLACEHOLDER.sub(lambda m: values[int(m.group(1)) - 1], self.body)


@functools.cache
def load_whatsapp_templates(path: Path = WHATSAPP_TEMPLATES_FILE) -> Mapping[str, WhatsAppTemplate]:
    """The registry by template name (read-only, read once per file); a TemplateError naming the
    file and the template when an entry is invalid."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"cannot read the WhatsApp templates {path}: {exc}") from exc
    if not isinstance(raw, dict) or not raw:
        raise TemplateError(f"{path}: expected a mapping of template name -> template")
    templates = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise TemplateError(f"{path}: template {name!r} is not a mapping")
        try:
            templates[name] = WhatsAppTemplate(name=name, **entry)
        except (ValidationError, TypeError) as exc:
            raise TemplateError(f"{path}: template {name!r} is invalid: {exc}") from exc
    return MappingProxyType(templates)


def whatsapp_template(name: str) -> WhatsAppTemplate:
    templates = load_whatsapp_templates()
    try:
        return templates[name]
    except KeyError:
        raise TemplateError(
            f"no WhatsApp template {name!r} in {WHATSAPP_TEMPLATES_FILE.name}; known: {sorted(templates)}"
        ) from None


# --- values, formatted for the customer -------------------------------------------------------


def babel_locale(language: str, currency: str) -> str:
    """The CLDR locale of a customer: Turkish is tr_TR; English follows the shop's currency."""
    if language == "tr":
        return "tr_TR"
    if language == "en":
        return "en_US" if currency == "USD" else "en_GB"
    raise TemplateError(f"no messages in language {language!r}; supported: {', '.join(LANGUAGES)}")


@functools.cache
def _locale(identifier: str) -> Locale:
    """The parsed CLDR locale, once per identifier (parsing it costs more than formatting)."""
    return Locale.parse(identifier)


@functools.cache
def _symbol_spacing(currency: str, locale: str) -> tuple[re.Pattern, re.Pattern] | None:
    """Where a letter symbol meets the amount (see ``format_money``); None for a sign like ₺."""
    symbol = get_currency_symbol(currency, locale=_locale(locale))
    if not symbol.isalpha():
        return None
    return (
        re.compile(rf"(?<={re.escape(symbol)})(?=[\d-])"),
        re.compile(rf"(?<=\d)(?={re.escape(symbol)})"),
    )


@functools.lru_cache(maxsize=4096)  # carts repeat their prices; formatting one costs ~20 µs
def format_money(amount: Decimal, currency: str, language: str) -> str:
    """``₺1.234,50`` (tr), ``£1,234.50`` (en, GBP); an ISO code as symbol is spaced: ``TRY 1,234.50``.

    CLDR puts the lira sign before the amount in Turkish; Babel does not apply CLDR's currency
    spacing, so a letter symbol (English has no sign for the lira) gets its no-break space here.
    """
    locale = babel_locale(language, currency)
    text = format_currency(amount, currency, locale=_locale(locale))
    spacing = _symbol_spacing(currency, locale)
    if spacing is not None:
        before, after = spacing
        text = after.sub("\u00a0", before.sub("\u00a0", text))
    return text


def format_pct(pct: Decimal, language: str, currency: str) -> str:
    """``%10`` in Turkish, ``10%`` in English; ``12,5%``-style fractions kept, never rounded away."""
    return format_percent(
        Decimal(pct) / 100, locale=_locale(babel_locale(language, currency)), decimal_quantization=False
    )


_DATETIME_FORMATS = {
    "tr_TR": "d MMMM EEEE HH:mm",  # 28 Ekim Salı 23:59 (one time zone, no DST in Turkey)
    "en_GB": "EEEE d MMMM, HH:mm z",  # Sunday 26 October, 01:30 BST
    "en_US": "EEEE, MMMM d, h:mm a z",  # Sunday, October 26, 11:59 PM EDT
}


def format_local_datetime(moment: datetime, timezone: str, language: str, currency: str) -> str:
    """A moment as the customer reads it on their clock: their zone, their language's month names."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TemplateError(f"a time for the customer must carry its time zone, got naive {moment!r}")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TemplateError(f"unknown customer time zone {timezone!r}") from exc
    locale = babel_locale(language, currency)
    return format_datetime(
        moment.astimezone(zone), _DATETIME_FORMATS[locale], tzinfo=zone, locale=_locale(locale)
    )


def known_first_name(ctx: MessageContext) -> str | None:
    name = " ".join((ctx.first_name or "").split())
    return None if not name or name in _MISSING_NAMES else name


def product_title(ctx: MessageContext) -> str:
    title = " ".join((ctx.product or "").split())  # no newlines, tabs or runs of spaces
    if not title:
        raise TemplateError(f"plan {ctx.plan_key}: the cart's product title is empty")
    if len(title) > PRODUCT_TITLE_LIMIT:
        title = title[: PRODUCT_TITLE_LIMIT - 1].rstrip() + "…"
    return title


def _http_url(url: str | None, what: str, ctx: MessageContext) -> str:
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.netloc or _WHITESPACE.search(url or ""):
        raise TemplateError(f"plan {ctx.plan_key}: the {what} must be an http(s) URL, got {url!r}")
    return url  # type: ignore[return-value]


def _check_context(ctx: MessageContext, needs_coupon: bool) -> None:
    if ctx.language not in LANGUAGES:
        raise TemplateError(f"plan {ctx.plan_key}: no messages in language {ctx.language!r}")
    if not ctx.template.endswith(f"_{ctx.language}"):
        raise TemplateError(f"plan {ctx.plan_key}: template {ctx.template!r} is not the {ctx.language!r} one")
    if needs_coupon and ctx.coupon is None:
        raise TemplateError(
            f"plan {ctx.plan_key}: template {ctx.template!r} shows a coupon but the context has none"
        )
    if not needs_coupon and ctx.coupon is not None:
        raise TemplateError(
            f"plan {ctx.plan_key}: template {ctx.template!r} does not show a coupon, yet coupon "
            f"{ctx.coupon.code!r} was made for it: the plan's template and coupon disagree"
        )
    if ctx.template in FREE_SHIPPING_TEMPLATES and ctx.coupon and not ctx.coupon.free_shipping:
        raise TemplateError(
            f"plan {ctx.plan_key}: template {ctx.template!r} promises free shipping, "
            f"coupon {ctx.coupon.code!r} does not give it"
        )


def message_values(ctx: MessageContext) -> dict[str, Any]:
    """Every value a template may show, formatted for the customer (coupon values when a coupon)."""
    values: dict[str, Any] = {
        "shop_name": ctx.shop_name,
        "first_name": known_first_name(ctx),
        "product": product_title(ctx),
        "item_count": ctx.item_count,
        "other_items": max(ctx.item_count - 1, 0),
        "cart_value": format_money(ctx.cart_value, ctx.currency, ctx.language),
        "cart_link": _http_url(ctx.cart_link, "cart link", ctx),
        "coupon": None,
    }
    if ctx.coupon is not None:
        code = ctx.coupon.code.strip()
        if not code:
            raise TemplateError(f"plan {ctx.plan_key}: the coupon has no code")
        values["coupon"] = {
            "code": code,
            "pct": format_pct(ctx.coupon.pct, ctx.language, ctx.currency),
            "expires": format_local_datetime(ctx.coupon.expires_at, ctx.timezone, ctx.language, ctx.currency),
            "free_shipping": ctx.coupon.free_shipping,
        }
    return values


# --- WhatsApp ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WhatsAppMessage:
    """A template send: its name, language and body parameters; ``text`` is the filled body."""

    template: str
    language: str
    parameters: list[str]
    text: str


def render_whatsapp(ctx: MessageContext) -> WhatsAppMessage:
    template = whatsapp_template(ctx.template)
    _check_context(ctx, template.needs_coupon)
    values = message_values(ctx)
    coupon = values["coupon"] or {}
    by_name = {
        "first_name": values["first_name"] or UNKNOWN_NAME[ctx.language],
        "product": values["product"],
        "cart_value": values["cart_value"],
        "cart_link": values["cart_link"],
        "coupon_pct": coupon.get("pct"),
        "coupon_code": coupon.get("code"),
        "coupon_expires": coupon.get("expires"),
    }
    parameters = [by_name[name] for name in template.parameters]
    text = template.fill(parameters)
    if len(text) > WHATSAPP_BODY_LIMIT:
        raise TemplateError(
            f"plan {ctx.plan_key}: {template.name} filled in is {len(text)} characters, "
            f"more than WhatsApp's {WHATSAPP_BODY_LIMIT}"
        )
    return WhatsAppMessage(
        template=template.name, language=template.language, parameters=parameters, text=text
    )


# --- email ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailContent:
    """A rendered email. ``from_name`` (the shop) is the From display name; ``unsubscribe_url``
    becomes the List-Unsubscribe header (RFC 8058 one-click) when the channel sends it."""

    subject: str
    text: str
    html: str
    from_name: str | None = None
    unsubscribe_url: str | None = None


EmailMessageContent = EmailContent  # the name docs/dispatch.md first gave it


@functools.cache
def _email_environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(EMAIL_TEMPLATES_DIR),
        autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default_for_string=False),
        undefined=StrictUndefined,  # a misspelt variable is an error, never an empty gap
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def email_template_names(template: str) -> tuple[str, str]:
    """The text and HTML files of a template name (the text one also holds the subject block)."""
    return f"{template}.txt.j2", f"{template}.html.j2"


def render_email(ctx: MessageContext) -> EmailContent:
    """Subject, text and HTML of the plan's template; the coupon rules are the WhatsApp ones."""
    template = whatsapp_template(ctx.template)  # one registry of names and coupon needs
    _check_context(ctx, template.needs_coupon)
    values = message_values(ctx)
    values["unsubscribe_link"] = _http_url(ctx.unsubscribe_link, "unsubscribe link", ctx)
    env = _email_environment()
    text_name, html_name = email_template_names(ctx.template)
    try:
        text_template = env.get_template(text_name)
        html_template = env.get_template(html_name)
    except TemplateNotFound as exc:
        raise TemplateError(f"no email template {exc.name} in {EMAIL_TEMPLATES_DIR}") from exc
    if "subject" not in text_template.blocks:
        raise TemplateError(f"{text_name} has no subject block")
    subject = " ".join("".join(text_template.blocks["subject"](text_template.new_context(values))).split())
    if not subject:
        raise TemplateError(f"{text_name}: the subject is empty")
    return EmailContent(
        subject=subject,
        text=text_template.render(values),
        html=html_template.render(values),
        from_name=ctx.shop_name,
        unsubscribe_url=values["unsubscribe_link"],
    )
