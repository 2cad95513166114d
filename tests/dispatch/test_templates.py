"""The recovery messages: every template the plan can pick, in both languages, reads as written for
this customer and this cart, never as generic copy.

The template names come from the recovery_stages seed (what dbt plans), not from a list here, so
a stage or template added to the seed is rendered by these tests or fails them.
"""

from __future__ import annotations

import csv
import re
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from cart_recovery.dispatch.message import Coupon, MessageContext
from cart_recovery.dispatch.templates import (
    EMAIL_TEMPLATES_DIR,
    UNKNOWN_NAME,
    TemplateError,
    email_template_names,
    format_money,
    format_pct,
    load_whatsapp_templates,
    render_email,
    render_whatsapp,
)

SEED = Path(__file__).resolve().parents[2] / "dbt_project" / "seeds" / "recovery_stages.csv"
CART_LINK = "https://hooks.anatolia.example/r/8f2c1e.Zm9vYmFy"
UNSUBSCRIBE_LINK = "https://hooks.anatolia.example/u/8f2c1e.YmF6cXV4"
EXPIRES = datetime(2025, 10, 28, 20, 59, tzinfo=UTC)  # 23:59 in Istanbul, 20:59 in London (GMT)


def _seed_cases() -> list[tuple[int, str, str, Decimal | None, bool]]:
    """(stage, template, language, coupon pct or None, free shipping) for every template planned."""
    cases = {}
    with SEED.open(newline="") as handle:
        for row in csv.DictReader(handle):
            stage, pct = int(row["stage"]), Decimal(row["coupon_pct"])
            free_shipping = row["free_shipping"].strip().lower() == "true"
            for language in ("en", "tr"):
                with_coupon = row[f"template_{language}"]
                without = row[f"template_no_coupon_{language}"]
                if pct > 0:
                    cases[with_coupon] = (stage, with_coupon, language, pct, free_shipping)
                cases.setdefault(without, (stage, without, language, None, False))
    return sorted(cases.values())


CASES = _seed_cases()
CASE_IDS = [f"stage{stage}-{template}" for stage, template, *_ in CASES]


def _context(stage: int, template: str, language: str, pct: Decimal | None, free_shipping: bool, **changes):
    turkish = language == "tr"
    ctx = MessageContext(
        plan_key=f"shop-anatolia:cart-7010:{stage}",
        cart_key="shop-anatolia:cart-7010",
        shop_id="anatolia-shopify",
        shop_name="Anatolia Keten Atölyesi" if turkish else "Hudson Goods",
        platform="shopify",
        stage=stage,
        template=template,
        language=language,
        timezone="Europe/Istanbul" if turkish else "Europe/London",
        first_name="Işıl Şağdaş" if turkish else "Oliver",
        product="Keten Gömlek" if turkish else "Organic Linen Shirt",
        item_count=3,
        cart_value=Decimal("1234.50"),
        currency="TRY" if turkish else "GBP",
        cart_link=CART_LINK,
        unsubscribe_link=UNSUBSCRIBE_LINK,
        coupon=Coupon(code=f"GERI-{stage}K7Q2", pct=pct, free_shipping=free_shipping, expires_at=EXPIRES)
        if pct is not None
        else None,
    )
    return replace(ctx, **changes)


# Left-overs of a template or of a missing value: none may reach a customer.
_UNFILLED = re.compile(r"\{\{|\}\}|\{%|%\}|\{#|\bNone\b|\bnan\b|\bNaN\b|\bnull\b|\bundefined\b")


def personal_problems(text: str, ctx: MessageContext, *, name_expected: bool = True) -> list[str]:
    """What makes ``text`` generic or broken for ``ctx``; empty when it is personal and complete."""
    problems = []
    if ctx.product not in text:
        problems.append(f"product {ctx.product!r} missing")
    if name_expected and ctx.first_name and ctx.first_name not in text:
        problems.append(f"first name {ctx.first_name!r} missing")
    problems += [f"unfilled {m.group()!r}" for m in _UNFILLED.finditer(text)]
    if ctx.coupon is not None:
        for what, value in (
            ("code", ctx.coupon.code),
            ("percentage", format_pct(ctx.coupon.pct, ctx.language, ctx.currency)),
        ):
            if value not in text:
                problems.append(f"coupon {what} {value!r} missing")
        if not re.search(r"\b(23:59|11:59 PM|20:59)\b", text):
            problems.append("coupon expiry missing")
    return problems


def test_the_generic_copy_check_catches_generic_copy():
    """The check the tests below rely on, held to texts it must refuse."""
    ctx = _context(2, "cart_reminder_coupon_en", "en", Decimal(5), False)
    assert personal_problems("Hi, you left something in your cart: " + CART_LINK, ctx) == [
        "product 'Organic Linen Shirt' missing",
        "first name 'Oliver' missing",
        "coupon code 'GERI-2K7Q2' missing",
        "coupon percentage '5%' missing",
        "coupon expiry missing",
    ]
    good = "Hi Oliver, 5% off the Organic Linen Shirt with GERI-2K7Q2 until Tuesday 28 October, 20:59 GMT"
    assert personal_problems(good, ctx) == []
    for broken in ("Hi {{1}}", "Hi None", "total nan", "{% if x %}", "code: null"):
        assert personal_problems(f"{good} {broken}", ctx), broken


def test_the_registry_holds_every_planned_template_with_its_coupon_needs_and_email_files():
    registry = load_whatsapp_templates()
    assert CASES, "the seed plans no templates"
    for stage, template, language, pct, _ in CASES:
        assert template in registry, f"stage {stage} plans {template}, not in whatsapp_templates.yaml"
        entry = registry[template]
        assert entry.language == language
        assert entry.needs_coupon == (pct is not None), template
        for name in email_template_names(template):
            assert (EMAIL_TEMPLATES_DIR / name).is_file(), name


@pytest.mark.parametrize(("stage", "template", "language", "pct", "free_shipping"), CASES, ids=CASE_IDS)
def test_whatsapp_message_is_personal(stage, template, language, pct, free_shipping):
    ctx = _context(stage, template, language, pct, free_shipping)
    message = render_whatsapp(ctx)
    entry = load_whatsapp_templates()[template]

    assert (message.template, message.language) == (template, language)
    assert len(message.parameters) == len(entry.parameters)
    assert personal_problems(message.text, ctx) == []
    assert CART_LINK in message.text
    assert message.text.startswith(entry.body.split("{{")[0])
    for value in message.parameters:  # Meta refuses newlines, tabs and runs of spaces in a parameter
        assert value.strip() and "\n" not in value and "\t" not in value and "     " not in value
    if "cart_value" in entry.parameters:
        assert format_money(Decimal("1234.50"), ctx.currency, language) in message.parameters
    if pct is not None:
        expiry = message.parameters[entry.parameters.index("coupon_expires")]
        assert expiry == ("28 Ekim Salı 23:59" if language == "tr" else "Tuesday 28 October, 20:59 GMT")


@pytest.mark.parametrize(("stage", "template", "language", "pct", "free_shipping"), CASES, ids=CASE_IDS)
def test_email_is_personal(stage, template, language, pct, free_shipping):
    ctx = _context(stage, template, language, pct, free_shipping)
    content = render_email(ctx)

    assert ctx.product in content.subject and "\n" not in content.subject
    assert not _UNFILLED.search(content.subject)
    why = "Bu e-postayı neden aldın" if language == "tr" else "Why this email"
    value = format_money(ctx.cart_value, ctx.currency, language)
    for part in (content.text, content.html):
        assert personal_problems(part, ctx) == []
        assert ctx.shop_name in part
        assert value in part
        assert CART_LINK in part and UNSUBSCRIBE_LINK in part
        assert why in part
        assert ("2 ürün daha" if language == "tr" else "2 other items") in part
    assert f'href="{CART_LINK}"' in content.html and f'href="{UNSUBSCRIBE_LINK}"' in content.html
    assert f'<html lang="{language}">' in content.html
    assert (content.from_name, content.unsubscribe_url) == (ctx.shop_name, UNSUBSCRIBE_LINK)
    if free_shipping:
        shipping = "ücretsiz kargo" if language == "tr" else "free shipping"
        assert shipping in content.text and shipping in content.subject


@pytest.mark.parametrize(("stage", "template", "language", "pct", "free_shipping"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("first_name", [None, "", "   ", "None", "nan"])
def test_an_unknown_first_name_still_reads_naturally(
    stage, template, language, pct, free_shipping, first_name
):
    ctx = _context(stage, template, language, pct, free_shipping, first_name=first_name)
    message = render_whatsapp(ctx)
    content = render_email(ctx)

    assert message.parameters[0] == UNKNOWN_NAME[language]
    assert ctx.product in content.subject and not _UNFILLED.search(content.subject)
    for text in (message.text, content.subject, content.text, content.html):
        if text is not content.subject:
            assert personal_problems(text, ctx, name_expected=False) == []
        assert " ," not in text and ",," not in text, text
        assert all("  " not in line.strip() for line in text.splitlines()), text
    greeting = "Merhaba," if language == "tr" else "Hi there,"
    assert content.text.startswith(greeting)
    assert f">{greeting}</p>" in content.html


def test_a_named_customer_is_greeted_by_name():
    ctx = _context(1, "cart_reminder_gentle_tr", "tr", None, False, first_name="  Çağrı  ")
    assert render_whatsapp(ctx).text.startswith("Merhaba Çağrı, sepetindeki Keten Gömlek (₺1.234,50)")
    content = render_email(ctx)
    assert content.subject == "Çağrı, sepetindeki Keten Gömlek seni bekliyor"
    assert content.text.startswith("Merhaba Çağrı,\n")


@pytest.mark.parametrize(
    ("amount", "currency", "language", "expected"),
    [
        ("1234.50", "TRY", "tr", "₺1.234,50"),
        ("1234.5", "TRY", "tr", "₺1.234,50"),
        ("1234.50", "GBP", "en", "£1,234.50"),
        ("1234.50", "USD", "en", "$1,234.50"),
        ("1234.50", "EUR", "tr", "€1.234,50"),
        ("1234.50", "TRY", "en", "TRY\u00a01,234.50"),  # English has no lira sign: the code, spaced
        ("0.99", "GBP", "en", "£0.99"),
    ],
)
def test_money_in_the_customers_language(amount, currency, language, expected):
    assert format_money(Decimal(amount), currency, language) == expected


@pytest.mark.parametrize(
    ("pct", "language", "expected"),
    [
        ("10", "tr", "%10"),
        ("10.00", "en", "10%"),
        ("5", "tr", "%5"),
        ("12.5", "tr", "%12,5"),
        ("12.5", "en", "12.5%"),
    ],
)
def test_percentages_in_the_customers_language(pct, language, expected):
    assert format_pct(Decimal(pct), language, "TRY") == expected


@pytest.mark.parametrize(
    ("expires_at", "expected"),
    [
        # British Summer Time ends at 01:00 UTC on 26 October 2025: the same clock time twice.
        (datetime(2025, 10, 26, 0, 30, tzinfo=UTC), "Sunday 26 October, 01:30 BST"),
        (datetime(2025, 10, 26, 1, 30, tzinfo=UTC), "Sunday 26 October, 01:30 GMT"),
        (datetime(2025, 10, 25, 22, 59, tzinfo=UTC), "Saturday 25 October, 23:59 BST"),
        (datetime(2025, 10, 26, 23, 59, tzinfo=UTC), "Sunday 26 October, 23:59 GMT"),
    ],
)
def test_the_expiry_is_shown_on_the_customers_clock_across_the_dst_change(expires_at, expected):
    ctx = _context(3, "cart_reminder_last_chance_en", "en", Decimal(10), True)
    ctx = replace(ctx, coupon=replace(ctx.coupon, expires_at=expires_at))
    assert f"until {expected}." in render_whatsapp(ctx).text
    content = render_email(ctx)
    assert f"The code expires on {expected}." in content.text
    assert f"The code expires on {expected}." in content.html


def test_the_expiry_in_turkish_has_turkish_month_and_day_names():
    ctx = _context(2, "cart_reminder_coupon_tr", "tr", Decimal(5), False)
    ctx = replace(ctx, coupon=replace(ctx.coupon, expires_at=datetime(2026, 2, 1, 9, 15, tzinfo=UTC)))
    assert "1 Şubat Pazar 12:15 tarihine kadar geçerli" in render_whatsapp(ctx).text


def test_html_is_escaped_and_text_keeps_the_title():
    hostile = '<script>alert("x")</script> Keten & Pamuk'
    ctx = _context(2, "cart_reminder_coupon_tr", "tr", Decimal(5), False, product=hostile)
    ctx = replace(ctx, shop_name="Ece & Eda <Butik>")
    content = render_email(ctx)

    assert "<script" not in content.html and "<Butik>" not in content.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; Keten &amp; Pamuk" in content.html
    assert "Ece &amp; Eda &lt;Butik&gt;" in content.html
    assert hostile in content.text and hostile in content.subject  # plain text is not HTML
    assert hostile in render_whatsapp(ctx).text


def test_product_titles_are_tidied_and_cut():
    ctx = _context(1, "cart_reminder_gentle_en", "en", None, False, product="  Linen\n\tShirt   Blue  ")
    assert render_whatsapp(ctx).parameters[1] == "Linen Shirt Blue"
    long = _context(1, "cart_reminder_gentle_en", "en", None, False, product="Shirt " * 40)
    title = render_whatsapp(long).parameters[1]
    assert len(title) == 80 and title.endswith("…")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"coupon": None}, "shows a coupon but the context has none"),
        ({"template": "cart_reminder_nonexistent_tr"}, "no WhatsApp template 'cart_reminder_nonexistent_tr'"),
        ({"language": "en"}, "is not the 'en' one"),
        ({"language": "de", "template": "cart_reminder_coupon_de"}, "no WhatsApp template"),
        ({"product": "   "}, "product title is empty"),
        ({"cart_link": "javascript:alert(1)"}, "cart link must be an http(s) URL"),
        ({"timezone": "Europe/Nowhere"}, "unknown customer time zone 'Europe/Nowhere'"),
    ],
)
def test_a_context_that_cannot_make_a_correct_message_is_refused(changes, message):
    ctx = replace(_context(2, "cart_reminder_coupon_tr", "tr", Decimal(5), False), **changes)
    for render in (render_whatsapp, render_email):
        with pytest.raises(TemplateError, match=re.escape(message)):
            render(ctx)


def test_coupon_rules_are_enforced():
    no_coupon_template = _context(1, "cart_reminder_gentle_en", "en", None, False)
    with_coupon = replace(no_coupon_template, coupon=Coupon("GERI-1", Decimal(5), False, EXPIRES))
    with pytest.raises(TemplateError, match="does not show a coupon, yet coupon 'GERI-1'"):
        render_whatsapp(with_coupon)

    no_free_shipping = _context(3, "cart_reminder_last_chance_tr", "tr", Decimal(10), False)
    with pytest.raises(TemplateError, match="promises free shipping"):
        render_email(no_free_shipping)

    naive = _context(2, "cart_reminder_coupon_en", "en", Decimal(5), False)
    naive = replace(naive, coupon=replace(naive.coupon, expires_at=datetime(2025, 10, 28, 23, 59)))
    with pytest.raises(TemplateError, match="must carry its time zone"):
        render_whatsapp(naive)


def test_an_email_needs_its_unsubscribe_link():
    ctx = _context(1, "cart_reminder_gentle_tr", "tr", None, False, unsubscribe_link=None)
    with pytest.raises(TemplateError, match="unsubscribe link must be an http"):
        render_email(ctx)
    assert render_whatsapp(ctx).text  # WhatsApp has its own opt-out (STOP, "Stop promotions")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "  language: en\n  category: MARKETING\n  parameters: [first_name, product]\n"
            '  body: "Hi {{1}}, the {{2}} and {{3}}"\n',
            "placeholders are [1, 2, 3] but its 2 parameters",
        ),
        (
            "  language: en\n  category: MARKETING\n  parameters: [first_name, shoe_size]\n"
            '  body: "Hi {{1}}, {{2}}"\n',
            "shoe_size",
        ),
        ("  category: MARKETING\n  parameters: [first_name]\n  body: 'Hi {{1}}'\n", "language"),
        (
            "  language: tr\n  category: MARKETING\n  parameters: [first_name]\n  body: 'Hi {{1}}'\n",
            "should end with _tr",
        ),
        (
            "  language: en\n  category: PROMO\n  parameters: [first_name]\n  body: 'Hi {{1}}'\n",
            "category",
        ),
        (
            "  language: en\n  category: MARKETING\n  parameters: [product, product]\n"
            "  body: '{{1}} {{2}}'\n",
            "parameters named twice: product",
        ),
    ],
)
def test_an_invalid_registry_entry_is_named_in_the_error(tmp_path, entry, message):
    path = tmp_path / "whatsapp_templates.yaml"
    path.write_text(
        "cart_reminder_ok_en:\n  language: en\n  category: MARKETING\n  parameters: [product]\n"
        '  body: "The {{1}} is in your cart"\ncart_reminder_broken_en:\n' + entry
    )
    with pytest.raises(TemplateError, match="template 'cart_reminder_broken_en' is invalid") as info:
        load_whatsapp_templates(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("item_count", "english", "turkish"),
    [(1, None, None), (2, "and 1 other item ", "ve 1 ürün daha"), (4, "and 3 other items", "ve 3 ürün daha")],
)
def test_the_other_items_in_the_cart_are_counted(item_count, english, turkish):
    for language, expected in (("en", english), ("tr", turkish)):
        content = render_email(
            _context(1, f"cart_reminder_gentle_{language}", language, None, False, item_count=item_count)
        )
        for part in (content.text, content.html):
            if expected is None:
                assert "other item" not in part and "ürün daha" not in part
            else:
                assert expected in part
